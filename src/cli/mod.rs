//! The command line: argument definitions and one module per subcommand.

pub mod bench;
mod bench_serve;
pub mod convert;
pub mod demo;
pub mod eval;
pub mod fetch;
pub mod info;
pub mod predict;
pub mod predict_volume;
pub mod serve;
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
    /// Rewrite a checkpoint (.pth or safetensors) as safetensors with the same keys, or a
    /// volume (DICOM series or file, NIfTI) as NIfTI.
    Convert(convert::ConvertArgs),
    /// Fetch a named model (lite_medsam) into the cache, or list them.
    Fetch(fetch::FetchArgs),
    /// Time the image encoder or the prompt encoder + mask decoder on random weights.
    Bench(bench::BenchArgs),
    /// Run `predict` on the embedded tiny model and a generated image.
    Demo(demo::DemoArgs),
    /// Train adapters (or LoRA, or everything) on a dataset.
    ///
    /// Reproducibility: on the CPU, the same --seed, the same build and the same machine
    /// type give bit-identical adapters and Adam state at any thread count
    /// (RAYON_NUM_THREADS), resumed or not. On GPUs the last bits can differ between runs:
    /// the tensor-core attention's backward adds a bias gradient with atomicAdd in no fixed
    /// order, and cuBLAS and NCCL choose their algorithms by GPU and version.
    Train(train::TrainArgs),
    /// Dice, IoU and HD95 per case on a dataset's test split.
    Eval(eval::EvalArgs),
    /// Serve a web page and JSON API: click or box to segment images and volumes.
    Serve(serve::ServeArgs),
}

/// Options shared by every command that loads a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// SAM checkpoint: official .pth or safetensors, or a named model (`lite_medsam`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JSON architecture description for a custom model (fields of sam_tiny.json's `config`).
    #[arg(long = "model-config", alias = "config")]
    pub model_config: Option<PathBuf>,
    /// Model input size; position tables are resized when it differs from the checkpoint's.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Trained adapters to apply (an msa adapter file or a PyTorch MSA checkpoint).
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// The image encoder's dtype: f32 (the default, which reproduces the official
    /// outputs), or bf16 (GPUs only) or f16 for less memory and time on a GPU.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: crate::model::precision::Precision,
}

impl ModelArgs {
    pub fn load(&self, device: &candle_core::Device) -> Result<crate::weights::Loaded> {
        let flags = crate::weights::ModelFlags::read(
            self.model_config.as_deref(),
            Some(self.precision),
            device,
        )?;
        let opts = crate::weights::LoadOptions {
            image_size: self.image_size,
            adapters_file: self.adapters.as_deref(),
            ..flags.load_options()
        };
        crate::weights::load_model(&self.checkpoint, &opts, device)
    }
}

/// Warns that a model's depth adapters go unused on 2D `inputs` (MSA-SPEC 2.2: the depth
/// branch runs on volumes only), so a 3D checkpoint on images is not mistaken for a 2D one.
pub fn warn_unused_depth(sam: &crate::model::sam::Sam, inputs: &str) {
    if sam.depth_chunk().is_some() {
        tracing::warn!(
            "the model holds depth adapters, which only volumes use; on {inputs} they are \
             loaded but not run"
        );
    }
}

/// Parses the command line (exiting with clap's message when it does not parse) and runs it.
pub fn main() -> Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = |id: &str| {
        matches.subcommand().is_some_and(|(_, sub)| {
            sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        })
    };
    run(cli, given)
}

/// Runs a parsed command line; `given(id)` says whether the subcommand's flag `id` was on
/// the command line rather than at its default.
pub fn run(cli: Cli, given: impl Fn(&str) -> bool) -> Result<()> {
    match cli.command {
        Command::Info(a) => info::run(&a),
        Command::Predict(a) => predict::run(&a),
        Command::PredictVolume(a) => predict_volume::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Fetch(a) => fetch::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Train(a) => train::run(&a, given),
        Command::Eval(a) => eval::run(&a),
        Command::Serve(a) => serve::run(&a),
    }
}
