//! The resolved configuration of a training run, written into every run folder.

// No panic on user data (RELIABILITY.md): an index or unwrap here is either an error or
// carries its proof in an `expect(..., reason)`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use crate::data::layout::DatasetKind;
use crate::data::prompts::PromptKind;
use crate::model::precision::Precision;
use crate::model::{AdapterConfig, AdapterInit};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TrainMode {
    /// Encoder and decoder adapters (the Medical SAM Adapter).
    Adapters,
    /// Decoder adapters only.
    Decoder,
    /// LoRA on the encoder's qkv.
    Lora,
    /// Every SAM weight (full fine-tuning, the MedSAM-style baseline).
    All,
}

/// The values a run takes when neither a flag nor a run config gives one; `msa train
/// --help` shows them.
pub mod defaults {
    use super::{AdapterInit, DatasetKind, PromptKind, TrainMode};
    pub const DATASET: DatasetKind = DatasetKind::Folder;
    pub const EPOCHS: usize = 10;
    pub const BATCH_SIZE: usize = 2;
    /// Adam's learning rate when none is given: see `lr`.
    pub fn lr(mode: TrainMode) -> f64 {
        match mode {
            // Adapters start as zero updates (their up-projections are zero), so at 1e-4
            // the first dozens of steps barely move the output (QUALITY.md).
            TrainMode::Adapters | TrainMode::Decoder => 1e-3,
            // Rank-4 updates are small: at 1e-3 LoRA was still rising after 10 epochs on
            // DDTI and PH2, and 5e-3 (SAMed's rate for SAM's LoRA) scored higher on both.
            TrainMode::Lora => 5e-3,
            // Every pretrained weight moves: the paper's and MedSAM's rate.
            TrainMode::All => 1e-4,
        }
    }
    pub const LR_STEP: usize = 10;
    pub const LR_GAMMA: f64 = 0.5;
    /// Clicks and boxes at random: on DDTI (QUALITY.md) boxes then beat the frozen model
    /// where click-only training made them worse, and clicks lose little.
    pub const PROMPT: PromptKind = PromptKind::Mixed;
    pub const TRAIN: TrainMode = TrainMode::Adapters;
    pub const VAL_EVERY: usize = 1;
    pub const VAL_FRACTION: f64 = 0.2;
    pub const SEED: u64 = 0;
    pub const WORKERS: usize = 2;
    /// The bottleneck as a fraction of the width. At 0.125 decoder adapters are 7% of
    /// LiteMedSAM (HyP-Adpt generates 32 x 32 matrices) against 20% at 0.25, and scored the
    /// same with a click and a box on DDTI, PH2 and the hippocampus slices; 0.25 did better
    /// when corrected with many clicks (QUALITY.md).
    pub const ADAPTER_RATIO: f64 = 0.125;
    pub const ADAPTER_INIT: AdapterInit = AdapterInit::Zero;
    pub const LORA_RANK: usize = 4;
    /// Off: on DDTI the decoders trained with corrections were worse after 1, 3 and 5 clicks,
    /// and obeyed almost none of them (QUALITY.md).
    pub const CORRECTIVE_CLICKS: usize = 0;
    /// Flips and intensity changes. The evidence is split (QUALITY.md): without them one
    /// click and a box score the same on DDTI and PH2 and DDTI's Dice after 3 clicks falls
    /// from 0.86 to 0.75; on the hippocampus slices they cost 0.065 with a click.
    pub const AUGMENT: bool = true;
    pub const SAMPLES: usize = 4;
    pub const CHUNK: usize = 8;
    pub const CHUNKS_PER_CASE: usize = 0;
    pub const HOLDOUT: usize = 0;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub checkpoint: PathBuf,
    /// A JSON architecture for a custom checkpoint (`--model-config`).
    #[serde(alias = "config")]
    pub model_config: Option<PathBuf>,
    pub data: PathBuf,
    pub dataset: DatasetKind,
    pub image_size: Option<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub lr_step: usize,
    pub lr_gamma: f64,
    pub prompt: PromptKind,
    /// Simulated corrective clicks per sample: up to N, drawn uniformly (MSA-SPEC 3.1a).
    #[serde(default)]
    pub corrective_clicks: usize,
    pub train: TrainMode,
    pub val_every: usize,
    pub val_fraction: f64,
    pub seed: u64,
    pub workers: usize,
    pub out: PathBuf,
    pub skip_bad: bool,
    pub adapter_ratio: f64,
    pub adapter_init: AdapterInit,
    pub lora_rank: usize,
    pub augment: bool,
    /// Overlays written per validation.
    pub samples: usize,
    /// Only the first N training and validation cases (a quick trial); None for all.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Volumes (Decathlon layout) in chunks of `chunk` slices, with depth adapters.
    #[serde(default)]
    pub three_d: bool,
    #[serde(default = "default_chunk")]
    pub chunk: usize,
    /// Chunks drawn per volume and epoch; 0: enough to cover its labelled slices.
    #[serde(default)]
    pub chunks_per_case: usize,
    /// Label values that become classes (`1,2,6` or a JSON map); None: all in dataset.json.
    #[serde(default)]
    pub labels: Option<String>,
    /// Intensity scaling of volumes (`-160,240`, a CT preset, `percentiles`); None: chosen
    /// from dataset.json's modality or the values.
    #[serde(default)]
    pub window: Option<String>,
    /// The slices volumes are cut into (their canonical frame).
    #[serde(default)]
    pub axis: crate::io::orientation::Axis,
    /// The series (number or UID) of each case's DICOM study, where dataset.json names none.
    #[serde(default)]
    pub series: Option<String>,
    /// The last N cases (sorted by id) are held out of training and validation.
    #[serde(default)]
    pub holdout: usize,
    /// The encoder's blocks keep no activations and are recomputed in the backward pass.
    #[serde(default)]
    pub checkpoint_blocks: bool,
    /// The frozen encoder's precision; None: bf16 on GPUs, f32 on the CPU.
    #[serde(default)]
    pub precision: Option<Precision>,
}

fn default_chunk() -> usize {
    defaults::CHUNK
}

impl TrainConfig {
    pub fn new(checkpoint: PathBuf, data: PathBuf, out: PathBuf) -> Self {
        Self {
            checkpoint,
            model_config: None,
            data,
            dataset: defaults::DATASET,
            image_size: None,
            epochs: defaults::EPOCHS,
            batch_size: defaults::BATCH_SIZE,
            lr: defaults::lr(defaults::TRAIN),
            lr_step: defaults::LR_STEP,
            lr_gamma: defaults::LR_GAMMA,
            prompt: defaults::PROMPT,
            corrective_clicks: defaults::CORRECTIVE_CLICKS,
            train: defaults::TRAIN,
            val_every: defaults::VAL_EVERY,
            val_fraction: defaults::VAL_FRACTION,
            seed: defaults::SEED,
            workers: defaults::WORKERS,
            out,
            skip_bad: false,
            adapter_ratio: defaults::ADAPTER_RATIO,
            adapter_init: defaults::ADAPTER_INIT,
            lora_rank: defaults::LORA_RANK,
            augment: defaults::AUGMENT,
            samples: defaults::SAMPLES,
            limit: None,
            three_d: false,
            chunk: defaults::CHUNK,
            chunks_per_case: defaults::CHUNKS_PER_CASE,
            labels: None,
            window: None,
            axis: Default::default(),
            series: None,
            holdout: defaults::HOLDOUT,
            checkpoint_blocks: false,
            precision: None,
        }
    }

    /// The adapters this mode builds.
    pub fn adapters(&self) -> AdapterConfig {
        let base = AdapterConfig {
            ratio: self.adapter_ratio,
            init: self.adapter_init,
            depth: self.three_d,
            depth_chunk: self.chunk,
            ..AdapterConfig::none()
        };
        match self.train {
            TrainMode::Adapters => AdapterConfig {
                encoder: true,
                decoder: true,
                ..base
            },
            TrainMode::Decoder => AdapterConfig {
                decoder: true,
                ..base
            },
            TrainMode::Lora => AdapterConfig {
                lora_rank: self.lora_rank,
                ..base
            },
            TrainMode::All => base,
        }
    }
}
