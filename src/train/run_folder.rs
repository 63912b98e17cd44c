//! The run folder: its lock, the run's state for resuming, metrics, curves, the JSON log,
//! adapter files with their metadata, and the temporary files a killed run leaves behind.
//! Only the first rank writes here.

use super::config::{TrainConfig, TrainMode};
use super::curves::{plot, EpochMetrics};
use super::lock::RunLock;
use super::loss_scale::LossScaleState;
use super::optim::Adam;
use super::phase::{mark, Phase};
use crate::io::atomic::write_atomically;
use crate::weights::adapter_file::{self, AdapterMeta, FORMAT};
use crate::weights::{save_safetensors, Checkpoint, Loaded};
use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a run stopped: written after every epoch.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct RunState {
    pub epochs_done: usize,
    pub adam_step: usize,
    pub best_dice: Option<f64>,
    pub history: Vec<EpochMetrics>,
    pub seed: u64,
    pub train: TrainMode,
    /// f16 runs: the dynamic loss scale after the last finished epoch.
    #[serde(default)]
    pub loss_scale: Option<LossScaleState>,
}

impl RunState {
    /// A run that has not trained yet.
    pub fn new(cfg: &TrainConfig) -> Self {
        Self {
            epochs_done: 0,
            adam_step: 0,
            best_dice: None,
            history: vec![],
            seed: cfg.seed,
            train: cfg.train,
            loss_scale: None,
        }
    }
}

/// A run folder held by this process.
pub(crate) struct RunFolder {
    dir: PathBuf,
    _lock: RunLock,
}

impl RunFolder {
    /// Creates `dir` if need be, takes its lock and removes what an interrupted run left.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let lock = RunLock::acquire(dir)?;
        mark(Phase::Setup);
        remove_stale_tmp(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `name` in the folder, replaced whole.
    pub fn write_text(&self, name: &str, text: &str) -> Result<()> {
        write_atomically(&self.path(name), text.as_bytes())
    }

    /// Appends one JSON line to `log.jsonl`.
    pub fn log(&self, v: serde_json::Value) -> Result<()> {
        let path = self.path("log.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // One write call per line: a kill cannot leave half a line behind.
        f.write_all(format!("{v}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// `metrics.csv` and `curves.png` for the epochs so far.
    pub fn write_metrics(&self, rows: &[EpochMetrics]) -> Result<()> {
        let fmt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        let mut csv = String::from("epoch,train_loss,val_dice,val_iou\n");
        for r in rows {
            csv.push_str(&format!(
                "{},{:.6},{},{}\n",
                r.epoch,
                r.train_loss,
                fmt(r.val_dice),
                fmt(r.val_iou)
            ));
        }
        let (csv_path, curves) = (self.path("metrics.csv"), self.path("curves.png"));
        // Both files are replaced whole, so a run resumed with them current has nothing to redo.
        if curves.exists() && std::fs::read_to_string(&csv_path).is_ok_and(|t| t == csv) {
            return Ok(());
        }
        write_atomically(&csv_path, csv.as_bytes())?;
        plot(&curves, rows)
    }

    /// The trained tensors (and, under full fine-tuning, the buffers) as adapter file `name`.
    pub fn save_adapters(
        &self,
        name: &str,
        tensors: &BTreeMap<String, Tensor>,
        meta: &AdapterMeta,
    ) -> Result<()> {
        adapter_file::save(&self.path(name), tensors, meta)
    }
}

/// Where the run state lives in run folder `dir`.
pub(crate) fn state_path(dir: &Path) -> PathBuf {
    dir.join("state_last.safetensors")
}

pub(crate) fn var_tensors(vars: &BTreeMap<String, Var>) -> BTreeMap<String, Tensor> {
    vars.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect()
}

pub(crate) fn adapter_meta(
    loaded: &Loaded,
    cfg: &TrainConfig,
    base_sha: &str,
) -> Result<AdapterMeta> {
    Ok(AdapterMeta {
        format: FORMAT.into(),
        base_preset: loaded.preset.clone(),
        base_backbone: loaded.sam.config.backbone_name().into(),
        preprocess: Some(loaded.sam.config.preprocess),
        base_sha256: base_sha.into(),
        adapters: loaded.sam.adapters.clone(),
        image_size: loaded.sam.config.img_size,
        training: serde_json::to_value(cfg)?,
        tool_version: env!("CARGO_PKG_VERSION").into(),
    })
}

pub(crate) fn save_state(
    path: &Path,
    state: &RunState,
    vars: &BTreeMap<String, Var>,
    adam: &Adam,
) -> Result<()> {
    let mut t = BTreeMap::new();
    for (k, v) in vars {
        t.insert(format!("param/{k}"), v.as_tensor().detach());
    }
    for (k, v) in &adam.m {
        t.insert(format!("adam_m/{k}"), v.clone());
    }
    for (k, v) in &adam.v {
        t.insert(format!("adam_v/{k}"), v.clone());
    }
    let meta = HashMap::from([("state".to_string(), serde_json::to_string(state)?)]);
    save_safetensors(path, &t, Some(meta))
}

pub(crate) fn load_state(
    path: &Path,
    vars: &BTreeMap<String, Var>,
    adam: &mut Adam,
    cfg: &TrainConfig,
) -> Result<RunState> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a run state file", path.display()))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("state"))
        .with_context(|| format!("{}: no run state metadata", path.display()))?;
    let state: RunState = serde_json::from_str(json)?;
    if state.train != cfg.train || state.seed != cfg.seed {
        bail!(
            "{}: the run used --train {:?} --seed {}; resume with the same settings",
            path.display(),
            state.train,
            state.seed
        );
    }
    let ckpt = Checkpoint::read(path)?;
    for (k, var) in vars {
        let t = ckpt
            .get_f32(&format!("param/{k}"), var.device())?
            .with_context(|| format!("{}: no `param/{k}`", path.display()))?;
        if t.dims() != var.dims() {
            bail!(
                "{}: `param/{k}` has shape {:?}, but these settings train it as {:?}; \
                 resume with the run's own settings (its config.toml)",
                path.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t)?;
        if let Some(m) = ckpt.get_f32(&format!("adam_m/{k}"), var.device())? {
            adam.m.insert(k.clone(), m);
        }
        if let Some(v) = ckpt.get_f32(&format!("adam_v/{k}"), var.device())? {
            adam.v.insert(k.clone(), v);
        }
    }
    adam.step = state.adam_step;
    Ok(state)
}

/// Refuses to resume a run under settings that change what it trains (`saved`: the run
/// folder's config.toml), naming each setting with both values.
pub(crate) fn check_same_run(
    config_toml: &Path,
    saved: &TrainConfig,
    cfg: &TrainConfig,
) -> Result<()> {
    let adapters = matches!(cfg.train, TrainMode::Adapters | TrainMode::Decoder) || cfg.three_d;
    let mode = |m: TrainMode| format!("{m:?}").to_lowercase();
    let pairs = [
        (
            !same_file(&saved.checkpoint, &cfg.checkpoint),
            "--checkpoint",
            display(&saved.checkpoint),
            display(&cfg.checkpoint),
        ),
        (true, "--train", mode(saved.train), mode(cfg.train)),
        (true, "--seed", saved.seed.to_string(), cfg.seed.to_string()),
        (
            true,
            "--3d",
            saved.three_d.to_string(),
            cfg.three_d.to_string(),
        ),
        (
            cfg.three_d,
            "--chunk",
            saved.chunk.to_string(),
            cfg.chunk.to_string(),
        ),
        (
            adapters,
            "--adapter-ratio",
            saved.adapter_ratio.to_string(),
            cfg.adapter_ratio.to_string(),
        ),
        (
            cfg.train == TrainMode::Lora,
            "--lora-rank",
            saved.lora_rank.to_string(),
            cfg.lora_rank.to_string(),
        ),
    ];
    let differing: Vec<String> = pairs
        .iter()
        .filter(|(applies, _, was, now)| *applies && was != now)
        .map(|(_, flag, was, now)| format!("{flag} {now} (the run used {was})"))
        .collect();
    if !differing.is_empty() {
        bail!(
            "cannot resume {}: {}; resume with the run's settings, e.g. `msa train --run-config {} --resume`",
            cfg.out.display(),
            differing.join(", "),
            config_toml.display()
        );
    }
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// One checkpoint, however it was written: a model's name or its cached file, a relative
/// or an absolute path.
fn same_file(a: &Path, b: &Path) -> bool {
    let file = |p: &Path| {
        let named = p
            .to_str()
            .and_then(crate::weights::registry::find)
            .map(crate::weights::registry::cached_path);
        let p = named.unwrap_or_else(|| p.to_path_buf());
        std::fs::canonicalize(&p).unwrap_or(p)
    };
    a == b || file(a) == file(b)
}

/// Temporary files (`.name.tmp`) of writes that a killed run left half done; the lock is
/// held, so no other process is writing them.
fn remove_stale_tmp(dir: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = path.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            n.starts_with('.') && n.ends_with(".tmp")
        });
        if stale && path.is_file() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            tracing::info!("removed {} left by an interrupted run", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_the_same_file_however_it_is_written() {
        let absolute = std::fs::canonicalize("Cargo.toml").unwrap();
        assert!(same_file(Path::new("Cargo.toml"), &absolute));
        assert!(same_file(
            Path::new("./Cargo.toml"),
            Path::new("Cargo.toml")
        ));
        assert!(!same_file(Path::new("Cargo.toml"), Path::new("README.md")));
    }
}
