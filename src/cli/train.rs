//! `msa train`: adapters on a dataset, into a run folder.

use crate::data::layout::DatasetKind;
use crate::data::prompts::PromptKind;
use crate::model::AdapterInit;
use crate::train::config::{TrainConfig, TrainMode};
use crate::train::launch::{self, Topology, Worker};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Base SAM checkpoint (stays frozen).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset folder.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetKind>,
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, value_enum)]
    pub prompt: Option<PromptKind>,
    /// What trains: adapters (default), decoder, lora, or all (full fine-tuning).
    #[arg(long, value_enum)]
    pub train: Option<TrainMode>,
    /// Validate every K epochs.
    #[arg(long)]
    pub val_every: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Data-loading threads.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Run folder.
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
    #[arg(long, value_enum)]
    pub adapter_init: Option<AdapterInit>,
    #[arg(long)]
    pub adapter_ratio: Option<f64>,
    /// Turn off flips and intensity augmentation. With a frozen encoder (--train decoder)
    /// the image embeddings are then computed once and reused every epoch.
    #[arg(long)]
    pub no_augment: bool,
    /// Only the first N training and validation cases (a quick trial).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Volumes (--dataset decathlon): train depth adapters on chunks of --chunk slices.
    #[arg(long = "3d")]
    pub three_d: bool,
    /// Consecutive slices per chunk that the depth adapters attend across.
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Volumes: chunks drawn per volume and epoch (default: enough to cover its labelled
    /// slices once on average).
    #[arg(long)]
    pub chunks_per_case: Option<usize>,
    /// Volumes: label values that become classes, `1,2,6` or a JSON map `{"6": 1, "7": 1}`.
    #[arg(long)]
    pub labels: Option<String>,
    /// Volumes: intensity scaling, `LO,HI` (CT window), a preset (`abdomen`, `lung`, ...)
    /// or `percentiles`; default from dataset.json's modality, else from the values.
    #[arg(long)]
    pub window: Option<String>,
    /// Volumes: hold the last N cases (sorted by id) out of training and validation.
    #[arg(long)]
    pub holdout: Option<usize>,
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
    /// The run configuration: the --run-config file (if any) with the flags on top.
    pub fn resolve(&self) -> Result<TrainConfig> {
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
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { c.$field = v.clone(); } )* };
        }
        set!(
            checkpoint,
            data,
            out,
            dataset,
            epochs,
            batch_size,
            lr,
            prompt,
            train,
            val_every,
            seed,
            workers,
            adapter_init,
            adapter_ratio,
            chunk,
            chunks_per_case,
            holdout
        );
        if self.labels.is_some() {
            c.labels = self.labels.clone();
        }
        if self.window.is_some() {
            c.window = self.window.clone();
        }
        if self.three_d && !c.three_d && self.batch_size.is_none() {
            c.batch_size = 1; // a chunk of D slices is already a batch of D images
        }
        c.three_d |= self.three_d;
        if c.three_d && c.dataset != DatasetKind::Decathlon {
            bail!("--3d trains on volumes: pass --dataset decathlon");
        }
        if self.config.is_some() {
            c.config = self.config.clone();
        }
        if self.image_size.is_some() {
            c.image_size = self.image_size;
        }
        if self.limit.is_some() {
            c.limit = self.limit;
        }
        c.skip_bad |= self.skip_bad;
        c.checkpoint_blocks |= self.checkpoint_blocks;
        if self.precision.is_some() {
            c.precision = self.precision;
        }
        if self.no_augment {
            c.augment = false;
        }
        Ok(c)
    }
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let cfg = args.resolve()?;
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
    let device = super::default_device()?;
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
