//! The training loop: frozen SAM plus trainable adapters, validation, resumable state,
//! and everything a run folder holds.

use super::batches::{epoch_batches, BatchSpec};
use super::config::{TrainConfig, TrainMode};
use super::curves::{plot, EpochMetrics};
use super::loss::{bce_with_logits, dice_ce};
use super::optim::{step_lr, Adam};
use crate::data::layout::{discover, Splits};
use crate::data::sample::check_items;
use crate::data::transform::Prepared;
use crate::eval::evaluate::{evaluate, summarize, PromptSource};
use crate::infer::EmbeddingCache;
use crate::model::{MaskSelection, Prompts, Sam, SamConfig};
use crate::resize::bilinear;
use crate::weights::adapter_file::{self, AdapterMeta, FORMAT};
use crate::weights::{load_model, save_safetensors, Checkpoint, LoadOptions, Loaded};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

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
}

/// Trains as `cfg` says. With `resume`, a run folder holding `state_last.safetensors`
/// continues after its last finished epoch; without it, such a folder is refused.
pub fn run(cfg: &TrainConfig, device: &Device, resume: bool) -> Result<RunResult> {
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let splits = checked_splits(cfg)?;
    let model_cfg = cfg
        .config
        .as_deref()
        .map(SamConfig::from_json_file)
        .transpose()?;
    let opts = LoadOptions {
        config: model_cfg.as_ref(),
        image_size: cfg.image_size,
        adapters: Some(cfg.adapters()),
        train: true,
        train_all: cfg.train == TrainMode::All,
        seed: cfg.seed,
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
    write_text(&cfg.out.join("config.toml"), &toml::to_string_pretty(cfg)?)?;
    write_text(
        &cfg.out.join("split.json"),
        &serde_json::to_string_pretty(&splits.ids())?,
    )?;
    let base_sha = adapter_file::sha256_file(&checkpoint)?;
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
    }
    let total = loaded.part_params.values().sum::<usize>() + loaded.adapter_params;
    log_line(
        cfg,
        json!({"event": "start", "trainable": loaded.adapter_params, "total": total,
        "train": splits.train.len(), "val": splits.val.len(), "split": splits.how}),
    )?;
    let spec = BatchSpec {
        items: splits.train.clone(),
        cfg: loaded.sam.config.clone(),
        batch_size: cfg.batch_size,
        prompt: cfg.prompt,
        augment: cfg.augment,
        seed: cfg.seed,
        workers: cfg.workers,
    };
    // A frozen encoder on unchanging images gives the same embeddings every epoch.
    let encoder_frozen = !vars.keys().any(|k| k.starts_with("image_encoder."));
    let mut cache = (encoder_frozen && !cfg.augment).then(|| EmbeddingCache::new(CACHE_BUDGET));
    if cache.is_some() {
        tracing::info!("encoder frozen and no augmentation: image embeddings are cached");
    }
    for epoch in state.epochs_done..cfg.epochs {
        let lr = step_lr(cfg.lr, epoch, cfg.lr_step, cfg.lr_gamma);
        let step = Step {
            sam: &loaded.sam,
            vars: &vars,
            lr,
            classes: splits.classes.len(),
        };
        let loss = train_epoch(&step, &mut adam, &spec, epoch, cfg, cache.as_mut())?;
        let validate = !splits.val.is_empty()
            && ((epoch + 1) % cfg.val_every.max(1) == 0 || epoch + 1 == cfg.epochs);
        let (val_dice, val_iou) = if validate {
            let (d, i) = validation(&loaded.sam, &splits, cfg, epoch, cache.as_mut())?;
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
        log_line(
            cfg,
            json!({"event": "epoch", "epoch": epoch + 1, "lr": lr, "train_loss": loss,
            "val_dice": val_dice, "val_iou": val_iou}),
        )?;
    }
    Ok(RunResult {
        history: state.history,
        best_dice: state.best_dice,
    })
}

/// Splits with every train/val case loaded once; bad cases stop the run or are skipped.
fn checked_splits(cfg: &TrainConfig) -> Result<Splits> {
    let mut splits = discover(cfg.dataset, &cfg.data, cfg.seed, cfg.val_fraction)?;
    if let Some(n) = cfg.limit {
        splits.train.truncate(n);
        splits.val.truncate(n);
    }
    if splits.train.is_empty() {
        bail!("{}: no training cases found", cfg.data.display());
    }
    let (train, mut bad) = check_items(&splits.train);
    let (val, bad_val) = check_items(&splits.val);
    bad.extend(bad_val);
    if !bad.is_empty() {
        let list: Vec<String> = bad
            .iter()
            .map(|(id, why)| format!("  {id}: {why}"))
            .collect();
        if !cfg.skip_bad {
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
    }
    splits.train = train;
    splits.val = val;
    if splits.train.is_empty() {
        bail!("no usable training cases left");
    }
    Ok(splits)
}

#[allow(clippy::too_many_arguments)]
/// What one optimisation step needs besides the batch.
struct Step<'a> {
    sam: &'a Sam,
    vars: &'a BTreeMap<String, Var>,
    lr: f64,
    classes: usize,
}

/// Embeddings kept at most (bytes) when the encoder is frozen.
const CACHE_BUDGET: usize = 4 << 30;

fn train_epoch(
    step: &Step,
    adam: &mut Adam,
    spec: &BatchSpec,
    epoch: usize,
    cfg: &TrainConfig,
    mut cache: Option<&mut EmbeddingCache>,
) -> Result<f64> {
    let n_batches = spec.items.len().div_ceil(spec.batch_size.max(1));
    let bar = ProgressBar::new(n_batches as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
    let start = std::time::Instant::now();
    let (mut sum, mut count, mut images) = (0.0, 0usize, 0usize);
    for batch in epoch_batches(spec.clone(), epoch)? {
        let batch = batch?;
        if batch.is_empty() {
            continue;
        }
        let loss = train_step(step, adam, &batch, cache.as_deref_mut())?;
        sum += loss;
        count += 1;
        images += batch.len();
        let rate = images as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.4} ({rate:.2} img/s)", sum / count as f64));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(if count > 0 {
        sum / count as f64
    } else {
        f64::NAN
    })
}

/// Forward, loss, backward and one Adam update; returns the loss.
fn train_step(
    step: &Step,
    adam: &mut Adam,
    batch: &[Prepared],
    cache: Option<&mut EmbeddingCache>,
) -> Result<f64> {
    let (sam, classes) = (step.sam, step.classes);
    let dev = sam.device();
    let s = sam.config.img_size;
    let b = batch.len();
    let target: Vec<f32> = batch.iter().flat_map(|p| p.masks.iter().copied()).collect();
    let target = Tensor::from_vec(target, (b, classes, s, s), dev)?;
    let prompts = batch_prompts(batch, dev)?;
    let emb = match cache {
        Some(cache) => {
            let embs = batch
                .iter()
                .map(|p| {
                    cache.get_or_insert(&p.id, || {
                        let x = Tensor::from_vec(p.input.clone(), (1, 3, s, s), dev)?;
                        Ok(sam.encode(&x)?)
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&embs, 0)?
        }
        None => {
            let input: Vec<f32> = batch.iter().flat_map(|p| p.input.iter().copied()).collect();
            sam.encode(&Tensor::from_vec(input, (b, 3, s, s), dev)?)?
        }
    };
    let out = sam.decode(&emb, &prompts)?;
    let (low, _) = out.select(MaskSelection::Classes(classes))?;
    let logits = bilinear(&low, s, s)?;
    let loss = if classes == 1 {
        bce_with_logits(&logits, &target, 2.0)?
    } else {
        dice_ce(&logits, &target)?
    };
    let grads = loss.backward()?;
    adam.step(step.vars, &grads, step.lr)?;
    Ok(loss.to_scalar::<f32>()? as f64)
}

/// The batch's prompts as tensors; every sample of a batch has the same prompt kind.
fn batch_prompts(batch: &[Prepared], dev: &Device) -> Result<Prompts> {
    let sets: Vec<_> = batch.iter().map(|p| p.prompt.clone()).collect();
    crate::infer::predictor::prompt_tensors(&sets, dev)
}

fn validation(
    sam: &Sam,
    splits: &Splits,
    cfg: &TrainConfig,
    epoch: usize,
    cache: Option<&mut EmbeddingCache>,
) -> Result<(f64, f64)> {
    let source = PromptSource::Drawn {
        kind: cfg.prompt,
        seed: cfg.seed,
    };
    let dir = cfg
        .out
        .join("samples")
        .join(format!("epoch_{:03}", epoch + 1));
    let results = evaluate(
        sam,
        &splits.val,
        &splits.classes,
        &source,
        Some((&dir, cfg.samples)),
        cache,
        |_| {},
    )?;
    let s = summarize(&results);
    Ok((s.dice.mean, s.iou.mean))
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
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn log_line(cfg: &TrainConfig, v: serde_json::Value) -> Result<()> {
    let path = cfg.out.join("log.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    writeln!(f, "{v}")?;
    Ok(())
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
    write_text(&cfg.out.join("metrics.csv"), &csv)?;
    plot(&cfg.out.join("curves.png"), rows)
}
