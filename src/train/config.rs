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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub checkpoint: PathBuf,
    pub config: Option<PathBuf>,
    pub data: PathBuf,
    pub dataset: DatasetKind,
    pub image_size: Option<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub lr_step: usize,
    pub lr_gamma: f64,
    pub prompt: PromptKind,
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
    8
}

impl TrainConfig {
    pub fn new(checkpoint: PathBuf, data: PathBuf, out: PathBuf) -> Self {
        Self {
            checkpoint,
            config: None,
            data,
            dataset: DatasetKind::Folder,
            image_size: None,
            epochs: 10,
            batch_size: 2,
            lr: 1e-4,
            lr_step: 10,
            lr_gamma: 0.5,
            prompt: PromptKind::Click,
            train: TrainMode::Adapters,
            val_every: 1,
            val_fraction: 0.2,
            seed: 0,
            workers: 2,
            out,
            skip_bad: false,
            adapter_ratio: 0.25,
            adapter_init: AdapterInit::Zero,
            lora_rank: 4,
            augment: true,
            samples: 4,
            limit: None,
            three_d: false,
            chunk: default_chunk(),
            chunks_per_case: 0,
            labels: None,
            window: None,
            holdout: 0,
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
