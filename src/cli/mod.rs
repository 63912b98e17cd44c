//! The command line: argument definitions and one module per subcommand.

pub mod bench;
mod bench_serve;
pub mod demo;
mod demo_volume;
pub mod eval;
pub mod eval_volume;
pub mod fetch;
pub mod info;
pub mod predict;
pub mod predict_volume;
pub mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "msa",
    version,
    about = "Medical SAM Adapter: Segment Anything with adapters, in Rust"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe a checkpoint: architecture, image size, parameters, adapters.
    Info(info::InfoArgs),
    /// Segment an image from clicks and/or a box.
    Predict(predict::PredictArgs),
    /// Segment a NIfTI volume or DICOM series from per-slice or 3D-box prompts into a
    /// label volume.
    PredictVolume(predict_volume::PredictVolumeArgs),
    /// Rewrite a checkpoint (.pth or safetensors) as safetensors with the same keys.
    Convert { input: PathBuf, output: PathBuf },
    /// Fetch a named model (lite_medsam) into the cache, or list them.
    Fetch(fetch::FetchArgs),
    /// Time the image encoder or the prompt encoder + mask decoder on random weights.
    Bench(bench::BenchArgs),
    /// Run `predict` on the embedded tiny model and a generated image.
    Demo(demo::DemoArgs),
    /// Train adapters (or LoRA, or everything) on a dataset.
    Train(train::TrainArgs),
    /// Dice, IoU and HD95 per case on a dataset's test split.
    Eval(eval::EvalArgs),
    /// Serve a web page and JSON API: click or box to segment images and volumes.
    Serve(crate::serve::ServeArgs),
}

/// Options shared by every command that loads a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// SAM checkpoint: official .pth or safetensors, or a named model (`lite_medsam`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JSON architecture description for a custom model (fields of sam_tiny.json's `config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model input size; position tables are resized when it differs from the checkpoint's.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Trained adapters to apply (an msa adapter file or a PyTorch MSA checkpoint).
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// The image encoder's dtype: f32 (the default, which reproduces the official
    /// outputs), or bf16 (GPUs only) or f16 for less memory and time on a GPU.
    #[arg(long, value_enum)]
    pub precision: Option<crate::model::precision::Precision>,
}

impl ModelArgs {
    pub fn load(&self, device: &candle_core::Device) -> Result<crate::weights::Loaded> {
        let cfg = self
            .config
            .as_deref()
            .map(crate::model::SamConfig::from_json_file)
            .transpose()?;
        use crate::model::precision::Precision;
        let precision = Precision::resolve(Some(self.precision.unwrap_or(Precision::F32)), device)?;
        let opts = crate::weights::LoadOptions {
            config: cfg.as_ref(),
            image_size: self.image_size,
            adapters_file: self.adapters.as_deref(),
            encoder_dtype: Some(precision.dtype()),
            ..Default::default()
        };
        crate::weights::load_model(&self.checkpoint, &opts, device)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info(a) => info::run(&a),
        Command::Predict(a) => predict::run(&a),
        Command::PredictVolume(a) => predict_volume::run(&a),
        Command::Convert { input, output } => {
            let n = crate::weights::convert(&input, &output)?;
            println!("wrote {n} tensors to {}", output.display());
            Ok(())
        }
        Command::Fetch(a) => fetch::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Train(a) => train::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Serve(a) => crate::serve::run(&a),
    }
}

/// The device commands run on: the first CUDA GPU in a `--features cuda` build, else CPU.
pub fn default_device() -> Result<candle_core::Device> {
    #[cfg(feature = "cuda")]
    {
        Ok(crate::runtime::cuda_device(0)?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(candle_core::Device::Cpu)
    }
}
