//! Adapter files: only the trained tensors, as safetensors, with the metadata needed to
//! refuse applying them to the wrong base model.

use super::checkpoint::{save_safetensors, Checkpoint};
use super::is_adapter_key;
use crate::model::{AdapterConfig, Preprocess, SamConfig};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

use std::path::Path;

const META_KEY: &str = "msa";
pub const FORMAT: &str = "msa-adapters/1";

/// What an adapter file says about where it belongs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    pub format: String,
    /// "vit_b", "vit_l", "vit_h", "lite_medsam", "mobile_sam" or "custom".
    pub base_preset: String,
    /// "vit" or "tiny_vit" (empty in files written before the TinyViT backbone).
    #[serde(default)]
    pub base_backbone: String,
    /// The base's preprocessing, which the adapters learned with.
    #[serde(default)]
    pub preprocess: Option<Preprocess>,
    /// SHA-256 of the base checkpoint file, hex.
    pub base_sha256: String,
    pub adapters: AdapterConfig,
    pub image_size: usize,
    /// The resolved training configuration, as the run folder's config.toml has it.
    pub training: serde_json::Value,
    pub tool_version: String,
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Writes the adapter tensors with their metadata (atomically).
pub fn save(path: &Path, tensors: &BTreeMap<String, Tensor>, meta: &AdapterMeta) -> Result<()> {
    let mut m = HashMap::new();
    m.insert(META_KEY.to_string(), serde_json::to_string(meta)?);
    m.insert("format".to_string(), meta.format.clone());
    save_safetensors(path, tensors, Some(m))
}

/// Adapter tensors from a file, with the metadata when it is one of ours. A PyTorch MSA
/// checkpoint (`.pth` holding a whole model) gives its adapter tensors and no metadata.
pub fn load(path: &Path) -> Result<(BTreeMap<String, Tensor>, Option<AdapterMeta>)> {
    let meta = read_meta(path)?;
    // Its depth adapters alone would load and drop every fine-tuned weight.
    if meta.as_ref().is_some_and(is_full_fine_tune) {
        bail!(
            "{0}: a fully fine-tuned model (msa train --train all), not adapters; \
             load it as the model: --checkpoint {0}",
            path.display()
        );
    }
    let tensors: BTreeMap<String, Tensor> = Checkpoint::read(path)?
        .tensors
        .into_iter()
        .filter(|(k, _)| is_adapter_key(k))
        .collect();
    if tensors.is_empty() {
        bail!(
            "{}: no adapter tensors (keys with `_Adapter` or `lora_`)",
            path.display()
        );
    }
    Ok((tensors, meta))
}

/// `msa train --train all` writes every SAM tensor into its `adapters_*.safetensors`.
fn is_full_fine_tune(meta: &AdapterMeta) -> bool {
    meta.training.get("train").and_then(|t| t.as_str()) == Some("all")
}

/// The msa metadata of a file we wrote (adapters, or a fully fine-tuned model); None for
/// other files.
pub fn read_meta(path: &Path) -> Result<Option<AdapterMeta>> {
    if super::checkpoint::sniff_format(path)? != super::checkpoint::Format::Safetensors {
        return Ok(None);
    }
    let Some(json) = super::checkpoint::safetensors_metadata(path)?.remove(META_KEY) else {
        return Ok(None);
    };
    let meta: AdapterMeta = serde_json::from_str(&json)
        .with_context(|| format!("{}: unreadable adapter metadata", path.display()))?;
    if meta.format != FORMAT {
        bail!(
            "{}: adapter format `{}`, this build reads `{FORMAT}`",
            path.display(),
            meta.format
        );
    }
    Ok(Some(meta))
}

/// Refuses adapters made for another base model, preprocessing or input size.
pub fn check_base(
    adapters: &Path,
    meta: &AdapterMeta,
    base: &Path,
    base_preset: &str,
    cfg: &SamConfig,
) -> Result<()> {
    let image_size = cfg.img_size;
    let backbone = cfg.backbone_name();
    if !meta.base_backbone.is_empty() && meta.base_backbone != backbone {
        bail!(
            "{} were trained on a {} base ({}), but {} is a {backbone} ({base_preset})",
            adapters.display(),
            meta.base_backbone,
            meta.base_preset,
            base.display()
        );
    }
    if meta.preprocess.is_some_and(|p| p != cfg.preprocess) {
        bail!(
            "{} were trained with {:?} preprocessing, but the model is set to {:?}; \
             check `preprocess` in --model-config",
            adapters.display(),
            meta.preprocess.unwrap_or_default(),
            cfg.preprocess
        );
    }
    if meta.base_preset != base_preset {
        bail!(
            "{} were trained on a {} base, but {} is {base_preset}",
            adapters.display(),
            meta.base_preset,
            base.display()
        );
    }
    let sha = sha256_file(base)?;
    if sha != meta.base_sha256 {
        bail!(
            "{} were trained on the base checkpoint with SHA-256 {}, but {} has {sha}; \
             pass the checkpoint they were trained on",
            adapters.display(),
            meta.base_sha256,
            base.display()
        );
    }
    if meta.image_size != image_size {
        bail!(
            "{} were trained at image size {}, the model is set to {image_size}; pass --image-size {}",
            adapters.display(),
            meta.image_size,
            meta.image_size
        );
    }
    Ok(())
}

/// The adapter settings a set of keys implies (for files without metadata).
pub fn infer_config(keys: impl IntoIterator<Item = impl AsRef<str>>) -> AdapterConfig {
    let mut cfg = AdapterConfig::none();
    for k in keys {
        let k = k.as_ref();
        cfg.encoder |= k.contains("Space_Adapter")
            || (k.starts_with("image_encoder") && k.contains("MLP_Adapter"));
        cfg.depth |= k.contains("Depth_Adapter");
        cfg.decoder |= k.starts_with("mask_decoder") && k.contains("_Adapter");
        if k.ends_with("lora_a") {
            cfg.lora_rank = 1; // the real rank is read from the tensor by the caller
        }
    }
    cfg
}
