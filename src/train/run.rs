//! The training loop: frozen SAM plus trainable tensors, one epoch after another, each
//! followed by validation and a checkpoint of the run folder, resumable after a kill.

use super::config::{TrainConfig, TrainMode};
use super::curves::EpochMetrics;
use super::loss_scale::LossScale;
use super::optim::{step_lr, Adam};
use super::parallel::{Communicator, Single, ThreadGroup};
use super::phase::{mark, Phase};
use super::run_folder::{
    adapter_meta, check_same_run, load_state, save_state, state_path, var_tensors, RunFolder,
    RunState,
};
use super::step::{Observer, Step, TrainData};
use crate::model::precision::Precision;
use crate::model::recompute::Recompute;
use crate::weights::{load_model, LoadOptions, Loaded, ModelFlags};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub history: Vec<EpochMetrics>,
    pub best_dice: Option<f64>,
}

/// Trains as `cfg` says. With `resume`, a run folder holding `state_last.safetensors`
/// continues after its last finished epoch; without it, such a folder is refused.
pub fn run(cfg: &TrainConfig, device: &Device, resume: bool) -> Result<RunResult> {
    run_rank(cfg, device, resume, &Single)
}

/// `run`, telling `observer` of every step.
pub fn run_observed(
    cfg: &TrainConfig,
    device: &Device,
    resume: bool,
    observer: &dyn Observer,
) -> Result<RunResult> {
    rank_with(cfg, device, resume, (&Single, Some(observer)))
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
    rank_with(cfg, device, resume, (comm, None))
}

fn rank_with(
    cfg: &TrainConfig,
    device: &Device,
    resume: bool,
    (comm, observer): (&dyn Communicator, Option<&dyn Observer>),
) -> Result<RunResult> {
    if cfg.three_d && cfg.dataset != crate::data::layout::DatasetKind::Decathlon {
        bail!("--3d trains on volumes: pass --dataset decathlon");
    }
    if cfg.corrective_clicks > 0 && cfg.dataset == crate::data::layout::DatasetKind::Decathlon {
        bail!(
            "--corrective-clicks {}: corrective clicks train on 2D images; volumes are not \
             supported yet (pass --corrective-clicks 0)",
            cfg.corrective_clicks
        );
    }
    if comm.world() > 1 && cfg.three_d {
        bail!("data-parallel training of volumes (--3d) is not supported yet");
    }
    let folder = match comm.rank() == 0 {
        true => Some(RunFolder::open(&cfg.out)?),
        false => None,
    };
    let mut data = open_data(cfg)?;
    let (loaded, precision, checkpoint) = load_trainable(cfg, device)?;
    let vars = loaded.params.trainables();
    let mut run = Run {
        cfg,
        checkpoint,
        loaded: &loaded,
        vars: &vars,
        comm,
        observer,
        folder: folder.as_ref(),
        adam: Adam::default(),
        state: RunState::new(cfg),
    };
    run.resume_if_asked(resume)?;
    run.write_setup(data.as_ref())?;
    run.log_start(data.as_ref(), precision)?;
    run.train(data.as_mut(), device)?;
    mark(Phase::Done);
    Ok(RunResult {
        history: run.state.history,
        best_dice: run.state.best_dice,
    })
}

/// The run's data: chunks of volumes with `--3d`, 2D images otherwise.
fn open_data(cfg: &TrainConfig) -> Result<Box<dyn TrainData>> {
    Ok(match cfg.three_d {
        true => Box::new(super::volume::VolumeData::open(cfg)?),
        false => Box::new(super::images::ImageData::open(cfg)?),
    })
}

/// The model with the tensors `cfg.train` names made trainable, the encoder's precision and
/// the checkpoint's path; an error when that leaves nothing to train.
fn load_trainable(cfg: &TrainConfig, device: &Device) -> Result<(Loaded, Precision, PathBuf)> {
    let flags = ModelFlags::read(cfg.model_config.as_deref(), cfg.precision, device)?;
    let opts = LoadOptions {
        image_size: cfg.image_size,
        adapters: Some(cfg.adapters()),
        train: true,
        train_all: cfg.train == TrainMode::All,
        seed: cfg.seed,
        ..flags.load_options()
    };
    let precision = flags.precision;
    let checkpoint = crate::weights::registry::resolve(&cfg.checkpoint)?;
    let loaded = load_model(&checkpoint, &opts, device)?;
    if loaded.params.trainables().is_empty() {
        bail!(
            "nothing to train: --train {:?} builds no trainable tensors",
            cfg.train
        );
    }
    Ok((loaded, precision, checkpoint))
}

/// A run under way: what every phase reads, and the state it advances.
struct Run<'a> {
    cfg: &'a TrainConfig,
    /// The base checkpoint's file.
    checkpoint: PathBuf,
    loaded: &'a Loaded,
    vars: &'a BTreeMap<String, Var>,
    comm: &'a dyn Communicator,
    observer: Option<&'a dyn Observer>,
    /// The run folder, on the rank that writes it.
    folder: Option<&'a RunFolder>,
    adam: Adam,
    state: RunState,
}

impl Run<'_> {
    /// The run's settings, splits and notes on the data, written before the first epoch.
    fn write_setup(&self, data: &dyn TrainData) -> Result<()> {
        let Some(folder) = self.folder else {
            return Ok(());
        };
        folder.write_text("config.toml", &toml::to_string_pretty(self.cfg)?)?;
        folder.write_text(
            "split.json",
            &serde_json::to_string_pretty(&data.split_ids())?,
        )?;
        for (name, text) in data.notes() {
            folder.write_text(name, &text)?;
        }
        Ok(())
    }

    /// The saved state and optimiser moments of an earlier run in the same folder, when
    /// `resume` asks for them; a folder holding a run is refused otherwise.
    fn resume_if_asked(&mut self, resume: bool) -> Result<()> {
        let path = state_path(&self.cfg.out);
        if !path.exists() {
            return Ok(());
        }
        if !resume {
            bail!(
                "{} holds a run already ({}); pass --resume to continue it or choose another --out",
                self.cfg.out.display(),
                path.display()
            );
        }
        let config_toml = self.cfg.out.join("config.toml");
        // A config.toml this build cannot read (an older run's) leaves the check to the shapes.
        if let Some(saved) = std::fs::read_to_string(&config_toml)
            .ok()
            .and_then(|text| toml::from_str::<TrainConfig>(&text).ok())
        {
            check_same_run(&config_toml, &saved, self.cfg)?;
        }
        self.state = load_state(&path, self.vars, &mut self.adam, self.cfg)?;
        tracing::info!("resuming after epoch {}", self.state.epochs_done);
        // A run killed after saving its state but before its metrics gets them now.
        if let Some(folder) = self.folder {
            folder.write_metrics(&self.state.history)?;
        }
        Ok(())
    }

    fn log_start(&self, data: &dyn TrainData, precision: Precision) -> Result<()> {
        let Some(folder) = self.folder else {
            return Ok(());
        };
        let loaded = self.loaded;
        let total = loaded.part_params.values().sum::<usize>() + loaded.adapter_params;
        let mut start = json!({"event": "start", "trainable": loaded.adapter_params,
            "total": total, "ranks": self.comm.world(),
            "checkpoint_blocks": self.cfg.checkpoint_blocks, "precision": precision});
        if let (Some(o), serde_json::Value::Object(d)) = (start.as_object_mut(), data.describe()) {
            o.extend(d);
        }
        folder.log(start)
    }

    /// The epochs left: each trains, validates when due, and checkpoints the run folder.
    fn train(&mut self, data: &mut dyn TrainData, device: &Device) -> Result<()> {
        let (cfg, loaded) = (self.cfg, self.loaded);
        let sam = &loaded.sam;
        let recompute = cfg
            .checkpoint_blocks
            .then(|| Recompute::new(self.vars.values()));
        let f16 = sam.encoder_dtype == candle_core::DType::F16;
        let loss_scale = f16.then(LossScale::default);
        if let (Some(ls), Some(saved)) = (&loss_scale, self.state.loss_scale) {
            ls.restore(saved);
        }
        let checkpoint = self
            .folder
            .map(|f| Checkpointer::new(f, self))
            .transpose()?;
        for epoch in self.state.epochs_done..cfg.epochs {
            let lr = step_lr(cfg.lr, epoch, cfg.lr_step, cfg.lr_gamma);
            let step = Step {
                sam,
                vars: self.vars,
                lr,
                comm: self.comm,
                recompute: recompute.as_ref(),
                loss_scale: loss_scale.as_ref(),
                observer: self.observer,
            };
            let started = std::time::Instant::now();
            let loss = data.train_epoch(&step, &mut self.adam, epoch)?;
            let trained = started.elapsed().as_secs_f64();
            let (val_dice, val_iou) = self.validate(data, epoch)?;
            let seconds = [trained, started.elapsed().as_secs_f64() - trained];
            self.state.history.push(EpochMetrics {
                epoch: epoch + 1,
                train_loss: loss,
                val_dice,
                val_iou,
            });
            self.state.epochs_done = epoch + 1;
            self.state.adam_step = self.adam.step;
            self.state.loss_scale = loss_scale.as_ref().map(LossScale::state);
            if let Some(c) = &checkpoint {
                c.save(self, lr, device, seconds)?;
            }
        }
        Ok(())
    }

    /// Mean validation Dice and IoU after `epoch`, on the writing rank when one is due.
    fn validate(
        &self,
        data: &mut dyn TrainData,
        epoch: usize,
    ) -> Result<(Option<f64>, Option<f64>)> {
        let cfg = self.cfg;
        let due = (epoch + 1).is_multiple_of(cfg.val_every.max(1)) || epoch + 1 == cfg.epochs;
        if self.folder.is_none() || !data.has_validation() || !due {
            return Ok((None, None));
        }
        mark(Phase::Validate);
        let dir = cfg
            .out
            .join("samples")
            .join(format!("epoch_{:03}", epoch + 1));
        let (d, i) = data.validate(&self.loaded.sam, &dir)?;
        Ok((Some(d), Some(i)))
    }
}

/// What the end of every epoch writes to the run folder.
struct Checkpointer<'a> {
    folder: &'a RunFolder,
    base_sha: String,
    /// A fully fine-tuned file holds every SAM tensor, buffers included, to load on its own.
    buffers: BTreeMap<String, Tensor>,
}

impl<'a> Checkpointer<'a> {
    fn new(folder: &'a RunFolder, run: &Run) -> Result<Self> {
        Ok(Self {
            folder,
            base_sha: crate::weights::adapter_file::sha256_file(&run.checkpoint)?,
            buffers: match run.cfg.train {
                TrainMode::All => run.loaded.params.buffers(),
                _ => BTreeMap::new(),
            },
        })
    }

    /// The adapters (the best ones too when validation improved), the run state, the
    /// metrics and the log line of the epoch just finished.
    /// `seconds`: the epoch's training and validation time, for the log only (the state
    /// stays a function of the seed, so resumed runs match uninterrupted ones bit for bit).
    fn save(&self, run: &mut Run, lr: f64, device: &Device, seconds: [f64; 2]) -> Result<()> {
        mark(Phase::Checkpoint);
        let (cfg, folder) = (run.cfg, self.folder);
        let meta = adapter_meta(run.loaded, cfg, &self.base_sha)?;
        let mut tensors = var_tensors(run.vars);
        tensors.extend(self.buffers.clone());
        folder.save_adapters("adapters_last.safetensors", &tensors, &meta)?;
        let row = run
            .state
            .history
            .last()
            .cloned()
            .context("no epoch to save")?;
        if let Some(d) = row.val_dice {
            if run.state.best_dice.is_none_or(|b| d > b) {
                run.state.best_dice = Some(d);
                folder.save_adapters("adapters_best.safetensors", &tensors, &meta)?;
            }
        }
        save_state(&state_path(&cfg.out), &run.state, run.vars, &run.adam)?;
        folder.write_metrics(&run.state.history)?;
        let mut line = json!({"event": "epoch", "epoch": row.epoch, "lr": lr,
            "train_loss": row.train_loss, "val_dice": row.val_dice, "val_iou": row.val_iou,
            "peak_memory_mib": crate::runtime::memory::peak_mib(device),
            "train_seconds": seconds[0], "val_seconds": seconds[1]});
        if let (Some(o), Some(s)) = (line.as_object_mut(), run.state.loss_scale) {
            o.insert("loss_scale".into(), json!(s));
        }
        folder.log(line)
    }
}
