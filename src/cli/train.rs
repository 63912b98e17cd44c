//! `msa train`: adapters on a dataset, into a run folder.

use crate::data::layout::DatasetKind;
use crate::data::prompts::PromptKind;
use crate::model::AdapterInit;
use crate::train::config::{defaults, TrainConfig, TrainMode};
use crate::train::launch::{self, Topology, Worker};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Base SAM checkpoint (stays frozen), or a named model; required without --run-config.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// JSON architecture description for a custom checkpoint.
    #[arg(long = "model-config", alias = "config")]
    pub model_config: Option<PathBuf>,
    /// Dataset folder; required without --run-config.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = defaults::DATASET)]
    pub dataset: DatasetKind,
    /// Model input size; default: the checkpoint's.
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long, default_value_t = defaults::EPOCHS)]
    pub epochs: usize,
    /// Images per step (volume chunks with --3d, where the default is 1).
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// Adam's learning rate; default 1e-3 for adapters and decoder, 5e-3 for lora, 1e-4 for all.
    #[arg(long)]
    pub lr: Option<f64>,
    /// The learning rate is multiplied by --lr-gamma every N epochs.
    #[arg(long, default_value_t = defaults::LR_STEP)]
    pub lr_step: usize,
    #[arg(long, default_value_t = defaults::LR_GAMMA)]
    pub lr_gamma: f64,
    /// Prompts drawn from the ground truth for every training sample (mixed: a click, a
    /// box or both, a third of the time each).
    #[arg(long, value_enum, default_value_t = defaults::PROMPT)]
    pub prompt: PromptKind,
    /// Simulated corrective clicks (2D): each sample gets up to N (drawn uniformly from
    /// 0..=N), each at the largest error of the pass before, whose logits become the mask
    /// prompt; the last pass trains.
    #[arg(long, default_value_t = defaults::CORRECTIVE_CLICKS)]
    pub corrective_clicks: usize,
    /// What trains: adapters, decoder (adapters), lora, or all (full fine-tuning).
    #[arg(long, value_enum, default_value_t = defaults::TRAIN)]
    pub train: TrainMode,
    /// Validate every K epochs (and after the last).
    #[arg(long, default_value_t = defaults::VAL_EVERY)]
    pub val_every: usize,
    /// Share of the training cases held out for validation when the data names none.
    #[arg(long, default_value_t = defaults::VAL_FRACTION)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Data-loading threads.
    #[arg(long, default_value_t = defaults::WORKERS)]
    pub workers: usize,
    /// Run folder; required without --run-config.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last saved epoch.
    #[arg(long)]
    pub resume: bool,
    /// A config.toml from an earlier run; flags given here override it.
    #[arg(long)]
    pub run_config: Option<PathBuf>,
    /// Skip unreadable or inconsistent cases with a warning instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// How the adapters' up-projections start.
    #[arg(long, value_enum, default_value_t = defaults::ADAPTER_INIT)]
    pub adapter_init: AdapterInit,
    /// Adapter bottleneck as a fraction of the width.
    #[arg(long, default_value_t = defaults::ADAPTER_RATIO)]
    pub adapter_ratio: f64,
    /// Rank of the low-rank qkv update with --train lora.
    #[arg(long, default_value_t = defaults::LORA_RANK)]
    pub lora_rank: usize,
    /// Overlays written per validation.
    #[arg(long, default_value_t = defaults::SAMPLES)]
    pub samples: usize,
    /// Turn off flips and intensity augmentation. With a frozen encoder (--train decoder)
    /// the image embeddings are then computed once and reused every epoch.
    #[arg(long)]
    pub no_augment: bool,
    /// Only the first N training and validation cases (a quick trial); default: all.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Volumes (--dataset decathlon): train depth adapters on chunks of --chunk slices.
    #[arg(long = "3d")]
    pub three_d: bool,
    /// Consecutive slices per chunk that the depth adapters attend across.
    #[arg(long, default_value_t = defaults::CHUNK)]
    pub chunk: usize,
    /// Volumes: chunks drawn per volume and epoch (0: enough to cover its labelled slices
    /// once on average).
    #[arg(long, default_value_t = defaults::CHUNKS_PER_CASE)]
    pub chunks_per_case: usize,
    /// Volumes: label values that become classes, `1,2,6` or a JSON map `{"6": 1, "7": 1}`;
    /// default: every label dataset.json names.
    #[arg(long)]
    pub labels: Option<String>,
    /// Volumes: intensity scaling, `LO,HI` (CT window), a preset (`abdomen`, `lung`, ...)
    /// or `percentiles`; default from dataset.json's modality, else from the values.
    #[arg(long)]
    pub window: Option<String>,
    /// Volumes: the slices to train on, axial (the default), coronal or sagittal; each
    /// volume is turned into that canonical frame first.
    #[arg(long)]
    pub axis: Option<crate::io::orientation::Axis>,
    /// Volumes: the series (number or UID) of each case's DICOM study, where dataset.json's
    /// entry names none.
    #[arg(long)]
    pub series: Option<String>,
    /// Volumes: hold the last N cases (sorted by id) out of training and validation.
    #[arg(long, default_value_t = defaults::HOLDOUT)]
    pub holdout: usize,
    /// Keep no activations of the encoder's blocks; recompute each block in the backward
    /// pass (less memory for about one more encoder forward per step).
    #[arg(long)]
    pub checkpoint_blocks: bool,
    /// The frozen encoder's precision (adapters, gradients and Adam stay f32); default
    /// bf16 on GPUs, f32 on the CPU.
    #[arg(long, value_enum)]
    pub precision: Option<crate::model::precision::Precision>,
    /// Data-parallel ranks on this node, one process each (one per GPU in a CUDA build;
    /// CPU processes otherwise). Every rank takes --batch-size images of each step.
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// Nodes in the run; start the same command on each with its --node-rank.
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Where rank 0 (node 0's first process) listens for the others.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Rank 0's port; default a free one (single node). Several nodes need it.
    #[arg(long)]
    pub master_port: Option<u16>,
}

impl TrainArgs {
    /// The run configuration: the --run-config file (if any) with the flags on top. `given`
    /// says whether a flag (by its field name) was on the command line: over a run config
    /// only those count, as the others hold their defaults.
    pub fn resolve(&self, given: impl Fn(&str) -> bool) -> Result<TrainConfig> {
        let mut c = match &self.run_config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("{}: not a run config", path.display()))?
            }
            None => TrainConfig::new(
                self.checkpoint
                    .clone()
                    .context("--checkpoint is required")?,
                self.data.clone().context("--data is required")?,
                self.out.clone().context("--out is required")?,
            ),
        };
        let fresh = self.run_config.is_none();
        macro_rules! set {
            ($($field:ident),*) => { $(
                if fresh || given(stringify!($field)) {
                    c.$field = self.$field.clone();
                }
            )* };
        }
        set!(
            dataset,
            epochs,
            lr_step,
            lr_gamma,
            prompt,
            corrective_clicks,
            train,
            val_every,
            val_fraction,
            seed,
            workers,
            adapter_init,
            adapter_ratio,
            lora_rank,
            samples,
            chunk,
            chunks_per_case,
            holdout
        );
        macro_rules! set_some {
            ($($field:ident),*) => { $(
                if let Some(v) = &self.$field {
                    c.$field = v.clone().into();
                }
            )* };
        }
        set_some!(
            checkpoint,
            data,
            out,
            model_config,
            image_size,
            limit,
            labels,
            window,
            axis,
            series,
            precision
        );
        if fresh || given("lr") || given("train") {
            c.lr = self.lr.unwrap_or(defaults::lr(c.train));
        }
        let batch_given = given("batch_size");
        if fresh || batch_given {
            c.batch_size = self.batch_size;
        }
        if self.three_d && !c.three_d && !batch_given {
            c.batch_size = 1; // a chunk of D slices is already a batch of D images
        }
        c.three_d |= self.three_d;
        c.skip_bad |= self.skip_bad;
        c.checkpoint_blocks |= self.checkpoint_blocks;
        if self.no_augment {
            c.augment = false;
        }
        Ok(c)
    }
}

/// `given(id)`: whether the flag with that id was on the command line.
pub fn run(args: &TrainArgs, given: impl Fn(&str) -> bool) -> Result<()> {
    let cfg = args.resolve(given)?;
    if let Some(worker) = Worker::from_env()? {
        let device = worker.device()?;
        let comm = worker.join(&device)?;
        let result = crate::train::run::run_rank(&cfg, &device, args.resume, comm.as_ref());
        if result.is_err() {
            comm.abort();
        }
        let result = result.with_context(|| format!("rank {}", worker.rank))?;
        if worker.rank == 0 {
            report(&cfg, &result);
        }
        return Ok(());
    }
    if args.gpus > 1 || args.nnodes > 1 {
        return launch::run_node(&Topology {
            per_node: args.gpus,
            nnodes: args.nnodes,
            node_rank: args.node_rank,
            master_addr: args.master_addr.clone(),
            master_port: args.master_port,
        });
    }
    let device = crate::runtime::device::default_device()?;
    let result = crate::train::run::run(&cfg, &device, args.resume)?;
    report(&cfg, &result);
    Ok(())
}

fn report(cfg: &TrainConfig, result: &crate::train::run::RunResult) {
    for r in &result.history {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
        println!(
            "epoch {:>3}  loss {:.4}  val dice {}  val iou {}",
            r.epoch,
            r.train_loss,
            f(r.val_dice),
            f(r.val_iou)
        );
    }
    println!("run folder: {}", cfg.out.display());
}
