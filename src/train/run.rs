//! The training loop: frozen SAM plus trainable adapters, validation, resumable state,
//! and everything a run folder holds.

use super::config::{TrainConfig, TrainMode};
use super::curves::{plot, EpochMetrics};
use super::loss_scale::{LossScale, LossScaleState};
use super::optim::{step_lr, Adam};
use super::parallel::{average, Communicator, Single, ThreadGroup};
use super::phase::{mark, Phase};
use crate::model::precision::Precision;
use crate::model::recompute::Recompute;
use crate::model::{Sam, SamConfig};
use crate::weights::adapter_file::{self, AdapterMeta, FORMAT};
use crate::weights::checkpoint::write_atomically;
use crate::weights::{load_model, save_safetensors, Checkpoint, LoadOptions, Loaded};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub history: Vec<EpochMetrics>,
    pub best_dice: Option<f64>,
}

/// Where a run stopped: written after every epoch.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RunState {
    epochs_done: usize,
    adam_step: usize,
    best_dice: Option<f64>,
    history: Vec<EpochMetrics>,
    seed: u64,
    train: TrainMode,
    /// f16 runs: the dynamic loss scale after the last finished epoch.
    #[serde(default)]
    loss_scale: Option<LossScaleState>,
}

/// What a run trains and validates on: 2D images or chunks of volumes.
pub(crate) trait TrainData {
    /// Case ids per split, written to split.json.
    fn split_ids(&self) -> BTreeMap<&'static str, Vec<String>>;
    /// Counts for the log's start line.
    fn describe(&self) -> serde_json::Value;
    fn has_validation(&self) -> bool;
    /// One epoch of optimisation steps; returns the mean loss.
    fn train_epoch(&mut self, step: &Step, adam: &mut Adam, epoch: usize) -> Result<f64>;
    /// Mean Dice and IoU on the validation cases, with sample pictures under `dir`.
    fn validate(&mut self, sam: &Sam, dir: &Path) -> Result<(f64, f64)>;
}

/// Trains as `cfg` says. With `resume`, a run folder holding `state_last.safetensors`
/// continues after its last finished epoch; without it, such a folder is refused.
pub fn run(cfg: &TrainConfig, device: &Device, resume: bool) -> Result<RunResult> {
    run_rank(cfg, device, resume, &Single)
}

/// Trains `threads` data-parallel ranks in this process, each on its share of every global
/// batch of `threads * cfg.batch_size` (2D images); returns rank 0's result.
pub fn run_threads(
    cfg: &TrainConfig,
    device: &Device,
    resume: bool,
    threads: usize,
) -> Result<RunResult> {
    let group = ThreadGroup::new(threads.max(1));
    let results: Vec<Result<RunResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .iter()
            .map(|comm| {
                scope.spawn(move || {
                    let result = run_rank(cfg, device, resume, comm);
                    if result.is_err() {
                        comm.abort();
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a training rank panicked"))
            })
            .collect()
    });
    let mut results = results.into_iter();
    // Rank 0's error first: the others then only report that a rank stopped.
    let first = results.next().context("no rank ran")??;
    for r in results {
        r?;
    }
    Ok(first)
}

/// One rank of a run. Rank 0 alone holds the lock and writes the run folder; every rank
/// reads the same splits and state, trains on its shard and applies the same update.
pub fn run_rank(
    cfg: &TrainConfig,
    device: &Device,
    resume: bool,
    comm: &dyn Communicator,
) -> Result<RunResult> {
    let lead = comm.rank() == 0;
    if comm.world() > 1 && cfg.three_d {
        bail!("data-parallel training of volumes (--3d) is not supported yet");
    }
    let _lock = match lead {
        true => {
            std::fs::create_dir_all(&cfg.out)
                .with_context(|| format!("cannot create {}", cfg.out.display()))?;
            let lock = super::lock::RunLock::acquire(&cfg.out)?;
            mark(Phase::Setup);
            remove_stale_tmp(&cfg.out)?;
            Some(lock)
        }
        false => None,
    };
    let mut data: Box<dyn TrainData> = if cfg.three_d {
        Box::new(super::volume::VolumeData::open(cfg)?)
    } else {
        Box::new(super::images::ImageData::open(cfg)?)
    };
    let model_cfg = cfg
        .config
        .as_deref()
        .map(SamConfig::from_json_file)
        .transpose()?;
    let precision = Precision::resolve(cfg.precision, device)?;
    let opts = LoadOptions {
        config: model_cfg.as_ref(),
        image_size: cfg.image_size,
        adapters: Some(cfg.adapters()),
        train: true,
        train_all: cfg.train == TrainMode::All,
        seed: cfg.seed,
        encoder_dtype: Some(precision.dtype()),
        ..Default::default()
    };
    let checkpoint = crate::weights::registry::resolve(&cfg.checkpoint)?;
    let loaded = load_model(&checkpoint, &opts, device)?;
    let vars = loaded.params.trainables();
    if vars.is_empty() {
        bail!(
            "nothing to train: --train {:?} builds no trainable tensors",
            cfg.train
        );
    }
    if lead {
        write_text(&cfg.out.join("config.toml"), &toml::to_string_pretty(cfg)?)?;
        write_text(
            &cfg.out.join("split.json"),
            &serde_json::to_string_pretty(&data.split_ids())?,
        )?;
    }
    let base_sha = match lead {
        true => adapter_file::sha256_file(&checkpoint)?,
        false => String::new(),
    };
    // A fully fine-tuned file holds every SAM tensor, buffers included, to load on its own.
    let buffers = match cfg.train {
        TrainMode::All => loaded.params.buffers(),
        _ => BTreeMap::new(),
    };
    let mut adam = Adam::default();
    let mut state = RunState {
        epochs_done: 0,
        adam_step: 0,
        best_dice: None,
        history: vec![],
        seed: cfg.seed,
        train: cfg.train,
        loss_scale: None,
    };
    let state_path = cfg.out.join("state_last.safetensors");
    if state_path.exists() {
        if !resume {
            bail!(
                "{} holds a run already ({}); pass --resume to continue it or choose another --out",
                cfg.out.display(),
                state_path.display()
            );
        }
        state = load_state(&state_path, &vars, &mut adam, cfg)?;
        tracing::info!("resuming after epoch {}", state.epochs_done);
        // A run killed after saving its state but before its metrics gets them now.
        if lead {
            write_metrics(cfg, &state.history)?;
        }
    }
    let total = loaded.part_params.values().sum::<usize>() + loaded.adapter_params;
    let mut start = json!({"event": "start", "trainable": loaded.adapter_params, "total": total,
        "ranks": comm.world(), "checkpoint_blocks": cfg.checkpoint_blocks,
        "precision": precision});
    if let (Some(o), serde_json::Value::Object(d)) = (start.as_object_mut(), data.describe()) {
        o.extend(d);
    }
    if lead {
        log_line(cfg, start)?;
    }
    let recompute = cfg.checkpoint_blocks.then(|| Recompute::new(vars.values()));
    let f16 = loaded.sam.encoder_dtype == candle_core::DType::F16;
    let loss_scale = f16.then(LossScale::default);
    if let (Some(ls), Some(saved)) = (&loss_scale, state.loss_scale) {
        ls.restore(saved);
    }
    for epoch in state.epochs_done..cfg.epochs {
        let lr = step_lr(cfg.lr, epoch, cfg.lr_step, cfg.lr_gamma);
        let step = Step {
            sam: &loaded.sam,
            vars: &vars,
            lr,
            comm,
            recompute: recompute.as_ref(),
            loss_scale: loss_scale.as_ref(),
        };
        let loss = data.train_epoch(&step, &mut adam, epoch)?;
        let validate = lead
            && data.has_validation()
            && ((epoch + 1) % cfg.val_every.max(1) == 0 || epoch + 1 == cfg.epochs);
        let (val_dice, val_iou) = if validate {
            mark(Phase::Validate);
            let dir = cfg
                .out
                .join("samples")
                .join(format!("epoch_{:03}", epoch + 1));
            let (d, i) = data.validate(&loaded.sam, &dir)?;
            (Some(d), Some(i))
        } else {
            (None, None)
        };
        let row = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss,
            val_dice,
            val_iou,
        };
        state.history.push(row);
        state.epochs_done = epoch + 1;
        state.adam_step = adam.step;
        state.loss_scale = loss_scale.as_ref().map(LossScale::state);
        if !lead {
            continue;
        }
        mark(Phase::Checkpoint);
        let meta = adapter_meta(&loaded, cfg, &base_sha)?;
        let mut tensors = var_tensors(&vars);
        tensors.extend(buffers.clone());
        adapter_file::save(&cfg.out.join("adapters_last.safetensors"), &tensors, &meta)?;
        if let Some(d) = val_dice {
            if state.best_dice.is_none_or(|b| d > b) {
                state.best_dice = Some(d);
                adapter_file::save(&cfg.out.join("adapters_best.safetensors"), &tensors, &meta)?;
            }
        }
        save_state(&state_path, &state, &vars, &adam)?;
        write_metrics(cfg, &state.history)?;
        let mut line = json!({"event": "epoch", "epoch": epoch + 1, "lr": lr,
            "train_loss": loss, "val_dice": val_dice, "val_iou": val_iou,
            "peak_memory_mib": super::memory::peak_mib(device)});
        if let (Some(o), Some(s)) = (line.as_object_mut(), state.loss_scale) {
            o.insert("loss_scale".into(), json!(s));
        }
        log_line(cfg, line)?;
    }
    mark(Phase::Done);
    Ok(RunResult {
        history: state.history,
        best_dice: state.best_dice,
    })
}

/// What one optimisation step needs besides the batch.
pub(crate) struct Step<'a> {
    pub sam: &'a Sam,
    pub vars: &'a BTreeMap<String, Var>,
    pub lr: f64,
    pub comm: &'a dyn Communicator,
    /// Set with `--checkpoint-blocks`: the encoder's blocks are recomputed in the backward.
    pub recompute: Option<&'a Arc<Recompute>>,
    /// Set when the encoder computes in f16.
    pub loss_scale: Option<&'a LossScale>,
}

/// A progress bar for one epoch of `n` steps; hidden where not `shown` (ranks after the
/// first).
pub(crate) fn epoch_bar(
    n: usize,
    epoch: usize,
    cfg: &TrainConfig,
    shown: bool,
) -> Result<ProgressBar> {
    if !shown {
        return Ok(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
    Ok(bar)
}

/// Bad cases stop the run with every reason listed, or with `skip` are skipped with a warning.
pub(crate) fn report_bad(bad: &[(String, String)], skip: bool) -> Result<()> {
    if bad.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = bad
        .iter()
        .map(|(id, why)| format!("  {id}: {why}"))
        .collect();
    if !skip {
        bail!(
            "{} bad case(s); fix them or pass --skip-bad:\n{}",
            bad.len(),
            list.join("\n")
        );
    }
    for l in &list {
        tracing::warn!("skipping{l}");
        eprintln!("warning: skipping{l}");
    }
    Ok(())
}

/// The mean of `count` losses summing to `sum`; NaN for none.
pub(crate) fn mean_loss(sum: f64, count: usize) -> f64 {
    if count > 0 {
        sum / count as f64
    } else {
        f64::NAN
    }
}

/// Backward pass, gradients averaged over the ranks, and one Adam update; returns the mean
/// loss over every rank's samples. `loss` is this rank's mean over its `samples` samples,
/// None when its shard was empty (it still takes part); None back when no rank had any.
pub(crate) fn apply_loss(
    step: &Step,
    adam: &mut Adam,
    loss: Option<&Tensor>,
    samples: usize,
) -> Result<Option<f64>> {
    mark(Phase::Backward);
    let local = match loss {
        Some(l) => {
            super::memory::sample(step.sam.device());
            let mut grads = match step.loss_scale {
                Some(s) => (l * s.scale())?.backward()?,
                None => l.backward()?,
            };
            super::memory::sample(step.sam.device());
            if let Some(r) = step.recompute {
                r.merge_into(&mut grads)?;
            }
            Some((grads, l.to_scalar::<f32>()? as f64))
        }
        None => None,
    };
    let Some((grads, loss)) = average(step.comm, step.vars, local, samples)? else {
        return Ok(None);
    };
    // Every rank sees the same averaged gradients, so all skip the same steps.
    let grads = match step.loss_scale {
        Some(s) => match s.unscale(grads, step.vars)? {
            Some(g) => g,
            None => return Ok(Some(loss)),
        },
        None => grads,
    };
    mark(Phase::Optimizer);
    adam.step(step.vars, &grads, step.lr)?;
    Ok(Some(loss))
}

fn var_tensors(vars: &BTreeMap<String, Var>) -> BTreeMap<String, Tensor> {
    vars.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect()
}

fn adapter_meta(loaded: &Loaded, cfg: &TrainConfig, base_sha: &str) -> Result<AdapterMeta> {
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

fn save_state(
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

fn load_state(
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

fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, text.as_bytes())
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

fn log_line(cfg: &TrainConfig, v: serde_json::Value) -> Result<()> {
    let path = cfg.out.join("log.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // One write call per line: a kill cannot leave half a line behind.
    f.write_all(format!("{v}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn write_metrics(cfg: &TrainConfig, rows: &[EpochMetrics]) -> Result<()> {
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
    let (csv_path, curves) = (cfg.out.join("metrics.csv"), cfg.out.join("curves.png"));
    // Both files are replaced whole, so a run resumed with them current has nothing to redo.
    if curves.exists() && std::fs::read_to_string(&csv_path).is_ok_and(|t| t == csv) {
        return Ok(());
    }
    write_text(&csv_path, &csv)?;
    plot(&curves, rows)
}
