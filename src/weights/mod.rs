//! Reading and writing weights: published checkpoints, key checks, resizing of position
//! tables, conversion.

pub mod checkpoint;
pub mod detect;
pub mod params;

pub use checkpoint::{convert, save_safetensors, Checkpoint};
pub use params::{Init, Params, Resize, Source};

use crate::model::{Sam, SamConfig};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::Path;

/// A model loaded from a file, with what was learned about the file on the way.
pub struct Loaded {
    pub sam: Sam,
    /// "vit_b", "vit_l", "vit_h" or "custom".
    pub preset: String,
    /// Input size of the checkpoint's position tables (may differ from the model's).
    pub checkpoint_image_size: Option<usize>,
    /// Adapter tensors present in the file but not part of the SAM architecture.
    pub adapter_keys: Vec<String>,
    /// Parameter count of each part (`image_encoder`, `prompt_encoder`, `mask_decoder`).
    pub part_params: BTreeMap<String, usize>,
    /// Parameter count of the adapter tensors found in the file.
    pub adapter_params: usize,
}

pub fn is_adapter_key(key: &str) -> bool {
    key.contains("Adapter") || key.contains("lora_")
}

/// Loads SAM from `path`. Without `config` the preset is detected from the shapes;
/// `image_size` overrides the input size (position tables are resized).
pub fn load_sam(
    path: &Path,
    config: Option<&SamConfig>,
    image_size: Option<usize>,
    device: &Device,
) -> Result<Loaded> {
    let ckpt = Checkpoint::read(path)?;
    let checkpoint_image_size = detect::checkpoint_image_size(&ckpt);
    let (preset, mut cfg) = match config {
        Some(c) => (c.preset_name().unwrap_or("custom").to_string(), c.clone()),
        None => detect::detect_preset(&ckpt)?,
    };
    if let Some(s) = image_size {
        cfg.img_size = s;
    }
    cfg.validate()?;
    let params = Params::new(Source::Checkpoint(ckpt), device);
    let sam = Sam::load(&params, &cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let unused = params.unused_keys();
    let (adapter_keys, unexpected): (Vec<_>, Vec<_>) =
        unused.into_iter().partition(|k| is_adapter_key(k));
    if !unexpected.is_empty() {
        let ckpt = params.checkpoint().context("checkpoint source")?;
        let shown: Vec<String> = unexpected
            .iter()
            .take(5)
            .map(|k| format!("`{k}` {:?}", ckpt.tensors[k].dims()))
            .collect();
        bail!(
            "{}: {} key(s) are not part of the {preset} architecture, e.g. {}; \
             is --config right for this file?",
            path.display(),
            unexpected.len(),
            shown.join(", ")
        );
    }
    let ckpt = params.checkpoint().context("checkpoint source")?;
    let adapter_params = adapter_keys
        .iter()
        .map(|k| ckpt.tensors[k].elem_count())
        .sum();
    Ok(Loaded {
        sam,
        preset,
        checkpoint_image_size,
        adapter_keys,
        part_params: part_params(&params.requested()),
        adapter_params,
    })
}

/// Every key and shape of a SAM built from `config`, without allocating weights.
pub fn expected_keys(config: &SamConfig) -> Result<BTreeMap<String, Vec<usize>>> {
    let params = Params::new(Source::Zeros, &Device::Cpu);
    Sam::load(&params, config)?;
    Ok(params.requested())
}

/// Parameters per top-level part, from a key -> shape map.
pub fn part_params(shapes: &BTreeMap<String, Vec<usize>>) -> BTreeMap<String, usize> {
    let mut parts = BTreeMap::new();
    for (k, shape) in shapes {
        let part = k.split('.').next().unwrap_or(k).to_string();
        *parts.entry(part).or_insert(0) += shape.iter().product::<usize>();
    }
    parts
}
