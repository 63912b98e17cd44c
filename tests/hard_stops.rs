//! Training against hard stops: two processes on one run folder, a run killed mid-way, a
//! folder that cannot be written.

mod common;

use common::{tiny_train_cmd, tmp_files};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn train_cmd(data: &Path, out: &Path, epochs: usize) -> Command {
    let mut cmd = tiny_train_cmd(data, out);
    cmd.args(["--dataset", "folder", "--batch-size", "2", "--seed", "3"])
        .args(["--epochs", &epochs.to_string()]);
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until the run folder's lock names `child`'s pid.
fn wait_for_lock(out: &Path, child: &Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = child.id().to_string();
    while std::fs::read_to_string(out.join("run.lock"))
        .unwrap_or_default()
        .trim()
        != pid
    {
        assert!(
            Instant::now() < deadline,
            "the first run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_run_on_one_folder_is_refused_and_a_killed_runs_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 8, (64, 48), 2).unwrap();
    let out = dir.path().join("run");
    let mut first = train_cmd(&data, &out, 200)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lock(&out, &first);
    let second = run(train_cmd(&data, &out, 1));
    assert!(!second.status.success());
    let e = text(&second);
    assert!(
        e.contains("in use by another msa train") && e.contains(&format!("pid {}", first.id())),
        "{e}"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The killed run's lock file still names it; the next run takes the lock over.
    let mut resume = train_cmd(&data, &out, 1);
    resume.arg("--resume");
    let after = run(resume);
    let t = text(&after);
    assert!(after.status.success(), "{t}");
    assert!(
        t.contains(&format!("taking over the lock of pid {}", first.id())),
        "{t}"
    );
    let lock = std::fs::read_to_string(out.join("run.lock")).unwrap();
    assert!(
        lock.trim().is_empty(),
        "a finished run leaves its lock empty: {lock:?}"
    );
}

#[test]
fn a_folder_that_cannot_be_written_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 4, (64, 48), 2).unwrap();
    // Root may write anywhere the mode forbids, so it gets a folder no one may write to.
    // SAFETY: geteuid has no preconditions.
    let out = if unsafe { libc::geteuid() } == 0 {
        Path::new("/proc/self").to_path_buf()
    } else {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("read_only");
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        ro
    };
    let started = Instant::now();
    let o = run(train_cmd(&data, &out, 1));
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("cannot write in the run folder") && t.contains(&out.display().to_string()),
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refused only after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_checkpoint_write_that_fails_part_way_keeps_the_previous_one_and_stops_naming_it() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 8, (64, 48), 2).unwrap();
    let out = dir.path().join("run");
    let first = run(train_cmd(&data, &out, 1));
    assert!(first.status.success(), "{}", text(&first));
    assert!(tmp_files(&out).is_empty(), "{:?}", tmp_files(&out));
    let state = out.join("state_last.safetensors");
    let before = std::fs::read(&state).unwrap();
    let adapters = std::fs::metadata(out.join("adapters_last.safetensors"))
        .unwrap()
        .len();
    // The state holds the adapters and Adam's two moments: a limit between the two sizes
    // lets the adapter file through and stops the state part way.
    let limit = (adapters + before.len() as u64) / 2;
    assert!(adapters < limit && limit < before.len() as u64);
    let mut resume = train_cmd(&data, &out, 2);
    resume.arg("--resume");
    // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
    unsafe {
        resume.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = run(resume);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("cannot write") && t.contains(&state.display().to_string()),
        "{t}"
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        before,
        "the previous state is intact"
    );
    assert!(tmp_files(&out).is_empty(), "{:?}", tmp_files(&out));
    // And the run resumes from it once the disk has room.
    let mut again = train_cmd(&data, &out, 2);
    again.arg("--resume");
    let o = run(again);
    assert!(o.status.success(), "{}", text(&o));
}
