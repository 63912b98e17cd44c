//! Kill tests. `msa train` on the tiny model is killed with SIGKILL at seeded random moments
//! in every phase (data loading, forward, backward, optimizer, checkpoint writing), resumed
//! with `--resume`, and killed again. After every kill the run folder must load; the run
//! that finally completes must hold adapters, run state and metrics bit-identical to an
//! uninterrupted run, and no `*.tmp`.
//!
//! `MSA_KILLS` (default 5, one per phase) and `MSA_KILL_SEED` (default 1) set the size;
//! `MSA_KILL_3D=1` trains depth adapters on the repository's hippocampus volumes instead of
//! generated 2D images; `MSA_KILL_LITE=1` trains the real LiteMedSAM (`--checkpoint
//! lite_medsam`, from the model cache; skipped with a message when it is not there) on the
//! repository's hippocampus slices, minutes per run, so never by default.
//! `bench/kill_test.sh` runs the long versions and keeps a JSON line of what each did.

mod common;

use common::{tensors, tiny_train_cmd, tmp_files};
use msa::data::synthetic::SplitMix;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PHASES: [&str; 5] = ["data", "forward", "backward", "optimizer", "checkpoint"];

/// What is trained: the tiny model on generated 2D images or on the hippocampus volumes
/// with `--3d`, or LiteMedSAM on the hippocampus slices.
#[derive(Clone, Copy)]
enum Mode {
    TwoD,
    ThreeD,
    Lite,
}

impl Mode {
    fn from_env() -> Self {
        let on = |name: &str| std::env::var(name).as_deref() == Ok("1");
        if on("MSA_KILL_LITE") {
            Mode::Lite
        } else if on("MSA_KILL_3D") {
            Mode::ThreeD
        } else {
            Mode::TwoD
        }
    }

    fn epochs(self) -> usize {
        match self {
            Mode::TwoD => 4,
            Mode::ThreeD | Mode::Lite => 2,
        }
    }

    /// How long one training process may take before the test gives up on it.
    fn deadline(self) -> Duration {
        match self {
            Mode::TwoD | Mode::ThreeD => Duration::from_secs(300),
            Mode::Lite => Duration::from_secs(3600),
        }
    }

    fn data(self, dir: &Path) -> PathBuf {
        match self {
            Mode::TwoD => {
                let data = dir.join("data");
                msa::data::synthetic::write_folder_dataset(&data, 10, (64, 48), 2).unwrap();
                data
            }
            Mode::ThreeD => Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/hippocampus3d"),
            Mode::Lite => Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/hippocampus2d"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::TwoD => "2d",
            Mode::ThreeD => "3d",
            Mode::Lite => "lite",
        }
    }
}

/// LiteMedSAM's file in the model cache, if it is there.
fn lite_medsam() -> Option<PathBuf> {
    let model = msa::weights::registry::find("lite_medsam")?;
    msa::weights::registry::is_cached(model).then(|| msa::weights::registry::cached_path(model))
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn train(mode: Mode, data: &Path, out: &Path, phase_file: &Path) -> Command {
    let mut cmd = match mode {
        Mode::TwoD | Mode::ThreeD => tiny_train_cmd(data, out),
        Mode::Lite => {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_msa"));
            cmd.arg("train")
                .args(["--checkpoint", "lite_medsam", "--train", "adapters"])
                .arg("--data")
                .arg(data)
                .arg("--out")
                .arg(out);
            cmd
        }
    };
    cmd.args(["--seed", "5", "--workers", "1", "--resume"])
        .args(["--epochs", &mode.epochs().to_string()])
        .env(msa::train::phase::PHASE_FILE, phase_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match mode {
        Mode::TwoD => cmd.args(["--dataset", "folder", "--batch-size", "2"]),
        Mode::ThreeD => cmd.args(["--dataset", "decathlon", "--3d"]),
        Mode::Lite => cmd.args(["--dataset", "folder", "--batch-size", "2", "--limit", "6"]),
    };
    cmd
}

/// The phase a process last entered, from its phase file; empty before the first mark.
fn read_phase(f: &File) -> String {
    let mut buf = [0u8; msa::train::phase::WIDTH];
    let n = f.read_at(&mut buf, 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

enum Outcome {
    /// Killed; the phase it was in.
    Killed(String),
    /// The run completed before the chosen moment came.
    Finished,
}

/// Runs until the `skip + 1`-th entry into `target`, waits `delay`, and kills; gives up
/// after `limit`.
fn kill_during(
    mut cmd: Command,
    phase_file: &Path,
    (target, skip): (&str, usize),
    delay: Duration,
    limit: Duration,
) -> Outcome {
    File::create(phase_file).unwrap();
    let watch = File::open(phase_file).unwrap();
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + limit;
    let (mut last, mut entries) = (String::new(), 0usize);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "training failed: {}", stderr(child));
            return Outcome::Finished;
        }
        let now = read_phase(&watch);
        if now != last {
            if now == target {
                entries += 1;
                if entries > skip {
                    std::thread::sleep(delay);
                    child.kill().unwrap();
                    child.wait().unwrap();
                    return Outcome::Killed(read_phase(&watch));
                }
            }
            last = now;
        }
        assert!(Instant::now() < deadline, "training took too long");
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn stderr(mut child: Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// What must survive a kill: the files a resume reads, each whole.
fn assert_loads(out: &Path) {
    for name in ["adapters_last.safetensors", "adapters_best.safetensors"] {
        let p = out.join(name);
        if p.exists() {
            let (t, meta) = msa::weights::adapter_file::load(&p).unwrap();
            assert!(!t.is_empty() && meta.is_some(), "{}", p.display());
        }
    }
    let state = out.join("state_last.safetensors");
    if state.exists() {
        assert!(!tensors(&state).is_empty());
    }
    for name in ["config.toml", "split.json"] {
        let p = out.join(name);
        if p.exists() {
            let text = std::fs::read_to_string(&p).unwrap();
            if name.ends_with(".toml") {
                toml::from_str::<toml::Value>(&text).unwrap();
            } else {
                serde_json::from_str::<serde_json::Value>(&text).unwrap();
            }
        }
    }
}

/// The completed run in `out` equals the uninterrupted one in `reference`, bit for bit.
fn assert_same_run(out: &Path, reference: &Path) {
    for name in [
        "adapters_last.safetensors",
        "adapters_best.safetensors",
        "state_last.safetensors",
    ] {
        let (a, b) = (tensors(&out.join(name)), tensors(&reference.join(name)));
        assert_eq!(a.len(), b.len(), "{name}: tensor count");
        for (k, v) in &a {
            assert!(
                b.get(k) == Some(v),
                "{name}: `{k}` differs from the uninterrupted run"
            );
        }
    }
    let metrics = |d: &Path| std::fs::read_to_string(d.join("metrics.csv")).unwrap();
    assert_eq!(metrics(out), metrics(reference), "metrics.csv");
    assert!(tmp_files(out).is_empty(), "{:?}", tmp_files(out));
}

#[test]
fn training_killed_at_random_moments_resumes_to_the_uninterrupted_result() {
    let kills = env_or("MSA_KILLS", PHASES.len() as u64) as usize;
    let seed = env_or("MSA_KILL_SEED", 1);
    let mode = Mode::from_env();
    if matches!(mode, Mode::Lite) && lite_medsam().is_none() {
        println!(
            "skipped: MSA_KILL_LITE=1 needs LiteMedSAM in the model cache (msa fetch lite_medsam)"
        );
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = mode.data(dir.path());
    let phase_file = dir.path().join("phase");

    let reference = dir.path().join("reference");
    let o = train(mode, &data, &reference, &phase_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(tmp_files(&reference).is_empty());

    let out = dir.path().join("run");
    let mut rng = SplitMix(seed);
    let per_phase = (kills / PHASES.len()).max(1);
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    let (mut done, mut attempts, mut completed) = (0usize, 0usize, 0usize);
    let covered = |l: &BTreeMap<String, usize>| {
        PHASES
            .iter()
            .all(|p| l.get(*p).copied().unwrap_or(0) >= per_phase)
    };
    while done < kills || !covered(&landed) {
        attempts += 1;
        assert!(
            attempts <= 10 * kills.max(5),
            "kills landed only in {landed:?}"
        );
        // Aim at the phase with the fewest kills so far; where in it is drawn.
        let target = *PHASES
            .iter()
            .min_by_key(|p| landed.get(**p).copied().unwrap_or(0))
            .unwrap();
        let skip = rng.below(6);
        let delay = Duration::from_micros(rng.below(800) as u64);
        match kill_during(
            train(mode, &data, &out, &phase_file),
            &phase_file,
            (target, skip),
            delay,
            mode.deadline(),
        ) {
            Outcome::Killed(phase) => {
                done += 1;
                *landed.entry(phase).or_default() += 1;
                assert_loads(&out);
            }
            Outcome::Finished => {
                assert_same_run(&out, &reference);
                completed += 1;
                std::fs::remove_dir_all(&out).unwrap();
            }
        }
    }
    let o = train(mode, &data, &out, &phase_file).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_run(&out, &reference);
    completed += 1;
    println!(
        "{}",
        serde_json::json!({"kills": done, "seed": seed, "landed": landed,
            "completed_runs": completed, "epochs": mode.epochs(), "mode": mode.name(),
            "seconds": started.elapsed().as_secs()})
    );
}
