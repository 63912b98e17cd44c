//! `msa demo`: the predict path end to end on the embedded tiny model and a generated image.
//! The tiny model has random weights: the demo shows the pipeline, not a useful mask.

use super::predict::{predict_and_write, Outputs};
use crate::data::synthetic::{lesion_image, mask_centroid};
use crate::infer::UserPrompt;
use crate::model::SamConfig;
use crate::weights::{Checkpoint, Params, Source};
use anyhow::{Context, Result};
use std::path::PathBuf;

const TINY_WEIGHTS: &[u8] = include_bytes!("../../tests/fixtures/sam_tiny.safetensors");
const TINY_CONFIG: &str = include_str!("../../tests/fixtures/sam_tiny.json");

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Folder for the image, mask, overlay and logits.
    #[arg(long, default_value = "demo_out")]
    pub out: PathBuf,
}

/// The tiny SAM the repository ships (random weights, official layout).
pub fn tiny_sam() -> Result<crate::model::Sam> {
    let value: serde_json::Value = serde_json::from_str(TINY_CONFIG)?;
    let cfg = SamConfig::from_json_value(value)?;
    let tensors = candle_core::safetensors::load_buffer(TINY_WEIGHTS, &candle_core::Device::Cpu)?;
    let ckpt = Checkpoint {
        path: PathBuf::from("<embedded sam_tiny.safetensors>"),
        tensors: tensors.into_iter().collect(),
    };
    let params = Params::new(Source::from(ckpt), &candle_core::Device::Cpu);
    Ok(crate::model::Sam::load(&params, &cfg)?)
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let sam = tiny_sam()?;
    let (img, truth) = lesion_image(160, 120, 42);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let image_path = args.out.join("image.png");
    img.save(&image_path)?;
    let (cx, cy) = mask_centroid(&truth, 160).context("generated mask is empty")?;
    let prompt = UserPrompt {
        points: vec![(cx, cy, 1)],
        bbox: None,
    };
    println!(
        "demo: tiny random-weight SAM, generated image {}, click ({cx:.1}, {cy:.1})",
        image_path.display()
    );
    let files = Outputs {
        mask: args.out.join("mask.png"),
        overlay: Some(args.out.join("overlay.png")),
        logits: Some(args.out.join("logits.safetensors")),
    };
    let selection = crate::model::MaskSelection::Sam { multimask: false };
    predict_and_write(&sam, &img, &prompt, selection, &files)?;
    Ok(())
}
