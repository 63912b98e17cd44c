//! Reading and writing weights: published checkpoints, key checks, resizing of position
//! tables, conversion.

// No panic on user data (RELIABILITY.md): an index or unwrap here is either an error or
// carries its proof in an `expect(..., reason)`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

pub mod adapter_file;
pub mod checkpoint;
pub mod detect;
pub mod pickle_scan;
pub mod registry;

pub use crate::params::{Init, Params, Resize, Source};
pub use checkpoint::{convert, save_safetensors, Checkpoint};

use crate::model::precision::Precision;
use crate::model::{AdapterConfig, AttentionKernel, ModelOptions, Sam, SamConfig};
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
    /// Adapter tensors the model carries, by key (taken from files or initialised).
    pub adapter_keys: Vec<String>,
    /// Parameter count of each frozen SAM part (`image_encoder`, `prompt_encoder`,
    /// `mask_decoder`), buffers not included.
    pub part_params: BTreeMap<String, usize>,
    /// Parameter count of the adapters (the trainable part).
    pub adapter_params: usize,
    /// The parameter source, for the trainable `Var`s when training.
    pub params: Params,
    /// Metadata of the adapter file applied, if any.
    pub adapter_meta: Option<adapter_file::AdapterMeta>,
}

pub fn is_adapter_key(key: &str) -> bool {
    key.contains("_Adapter.") || key.contains("lora_")
}

/// How to load a model.
#[derive(Default, Clone)]
pub struct LoadOptions<'a> {
    /// Architecture; detected from the shapes when absent.
    pub config: Option<&'a SamConfig>,
    /// Input size override (position tables are resized).
    pub image_size: Option<usize>,
    /// An adapter file (ours, or a PyTorch MSA checkpoint) applied over the base.
    pub adapters_file: Option<&'a Path>,
    /// Adapters to build; absent: those the checkpoint and adapter file hold.
    pub adapters: Option<AdapterConfig>,
    /// Adapter tensors become trainable `Var`s.
    pub train: bool,
    /// Every SAM tensor becomes a trainable `Var` (full fine-tuning).
    pub train_all: bool,
    /// Seed of adapter initialisation.
    pub seed: u64,
    /// The dtype of the frozen image encoder (`--precision`); None: f32.
    pub encoder_dtype: Option<candle_core::DType>,
    /// Attention on `kernels::attention::flash`; None: as `MSA_FLASH_ATTENTION` says.
    pub flash_attention: Option<bool>,
}

/// What every command that loads a model reads from its flags: an architecture JSON
/// (`--model-config`) and the encoder's precision, checked against the device.
pub struct ModelFlags {
    pub config: Option<SamConfig>,
    pub precision: Precision,
}

impl ModelFlags {
    /// `precision` None: the device's default (`Precision::resolve`).
    pub fn read(
        model_config: Option<&Path>,
        precision: Option<Precision>,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            config: model_config.map(SamConfig::from_json_file).transpose()?,
            precision: Precision::resolve(precision, device)?,
        })
    }

    /// Load options with this architecture and precision, the rest default.
    pub fn load_options(&self) -> LoadOptions<'_> {
        LoadOptions {
            config: self.config.as_ref(),
            encoder_dtype: Some(self.precision.dtype()),
            ..Default::default()
        }
    }
}

impl LoadOptions<'_> {
    /// The precision the encoder computes in.
    pub fn precision(&self) -> Precision {
        Precision::of(self.encoder_dtype)
    }

    /// How the model's layers compute: the encoder's dtype, and the attention kernel asked
    /// for, else the one the environment names.
    pub fn model_options(&self) -> ModelOptions {
        let mut model = ModelOptions::default();
        if let Some(dtype) = self.encoder_dtype {
            model.encoder_dtype = dtype;
        }
        match self.flash_attention {
            Some(true) => model.attention = AttentionKernel::Flash,
            Some(false) if model.attention == AttentionKernel::Flash => {
                model.attention = AttentionKernel::Standard
            }
            _ => {}
        }
        model
    }
}

/// Loads SAM from `path`. Without `config` the preset is detected from the shapes;
/// `image_size` overrides the input size (position tables are resized).
pub fn load_sam(
    path: &Path,
    config: Option<&SamConfig>,
    image_size: Option<usize>,
    device: &Device,
) -> Result<Loaded> {
    let opts = LoadOptions {
        config,
        image_size,
        ..Default::default()
    };
    load_model(path, &opts, device)
}

/// Loads SAM and its adapters as `opts` says.
/// `path` may name a model instead (`lite_medsam`): it is fetched into the cache first.
pub fn load_model(path: &Path, opts: &LoadOptions, device: &Device) -> Result<Loaded> {
    let path = &registry::resolve(path)?;
    let mut ckpt = Checkpoint::read(path)?;
    let checkpoint_image_size = detect::checkpoint_image_size(&ckpt);
    let (preset, mut cfg) = match opts.config {
        Some(c) => (c.preset_name().unwrap_or("custom").to_string(), c.clone()),
        None => detect::detect_preset(&ckpt)?,
    };
    if let Some(s) = opts.image_size {
        cfg.img_size = s;
    }
    cfg.validate()?;
    let mut adapter_meta = None;
    if let Some(file) = opts.adapters_file {
        let (tensors, meta) = adapter_file::load(file)?;
        match &meta {
            Some(m) => adapter_file::check_base(file, m, path, &preset, &cfg)?,
            None => tracing::warn!(
                "{} has no msa metadata (a PyTorch MSA checkpoint?): its base cannot be checked",
                file.display()
            ),
        }
        ckpt.tensors.extend(tensors);
        adapter_meta = meta;
    }
    let ad = match (&opts.adapters, &adapter_meta, opts.adapters_file) {
        (Some(a), _, _) => {
            check_adapter_ratio(path, &ckpt, a)?;
            a.clone()
        }
        (None, Some(m), _) => m.adapters.clone(),
        (None, None, Some(_)) => adapters_in(&ckpt),
        (None, None, None) => own_adapters(path, &ckpt)?,
    };
    let params = if opts.train_all {
        Params::train_all(Source::from(ckpt), device, opts.seed)
    } else {
        Params::with_options(Source::from(ckpt), device, opts.train, opts.seed)
    };
    let sam = Sam::load_with(&params, &cfg, &ad, &opts.model_options())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    check_unused(&params, path, &preset)?;
    let trainables = params.trainables();
    // Parameters only, as PyTorch counts them: buffers (BatchNorm statistics, the prompt
    // encoder's Fourier matrix) are not.
    let buffers = params.buffers();
    let requested: BTreeMap<String, Vec<usize>> = params
        .requested()
        .into_iter()
        .filter(|(k, _)| !trainables.contains_key(k) && !buffers.contains_key(k))
        .collect();
    Ok(Loaded {
        sam,
        preset,
        checkpoint_image_size,
        adapter_keys: trainables.keys().cloned().collect(),
        part_params: part_params(&requested),
        adapter_params: trainables.values().map(|v| v.elem_count()).sum(),
        params,
        adapter_meta,
    })
}

/// The adapters a checkpoint holds. A fully fine-tuned file of ours also says the settings
/// its tensors cannot tell (the depth chunk); its metadata must agree with its tensors.
fn own_adapters(path: &Path, ckpt: &Checkpoint) -> Result<AdapterConfig> {
    let found = adapters_in(ckpt);
    let Some(meta) = adapter_file::read_meta(path)? else {
        return Ok(found);
    };
    let kinds = |a: &AdapterConfig| (a.encoder, a.decoder, a.depth, a.lora_rank > 0);
    if kinds(&meta.adapters) != kinds(&found) {
        bail!(
            "{}: its metadata names adapters {:?} (encoder, decoder, depth, LoRA) but its \
             tensors hold {:?}",
            path.display(),
            kinds(&meta.adapters),
            kinds(&found)
        );
    }
    Ok(meta.adapters)
}

/// The adapters a checkpoint's keys imply, with the LoRA rank read from its tensors.
fn adapters_in(ckpt: &Checkpoint) -> AdapterConfig {
    let mut ad = adapter_file::infer_config(ckpt.tensors.keys());
    if let Some((_, t)) = ckpt.tensors.iter().find(|(k, _)| k.ends_with("lora_a")) {
        // A malformed tensor keeps the default; the shape check of the load names it.
        ad.lora_rank = t.dims().first().copied().unwrap_or(ad.lora_rank);
    }
    if let Some((_, hidden, dim)) = encoder_adapter_width(ckpt) {
        ad.ratio = hidden as f64 / dim as f64;
    }
    ad
}

/// The first encoder adapter a checkpoint holds: its key, bottleneck width and block width.
fn encoder_adapter_width(ckpt: &Checkpoint) -> Option<(&str, usize, usize)> {
    let (key, t) = ckpt
        .tensors
        .iter()
        .find(|(k, _)| k.starts_with("image_encoder.") && k.ends_with("_Adapter.D_fc1.weight"))?;
    match *t.dims() {
        [hidden, dim, ..] if dim > 0 => Some((key.as_str(), hidden, dim)),
        _ => None,
    }
}

/// Adapters asked for at one ratio cannot take a checkpoint's adapters of another width:
/// say which ratio they were trained at, rather than leaving the user a shape mismatch.
fn check_adapter_ratio(path: &Path, ckpt: &Checkpoint, asked: &AdapterConfig) -> Result<()> {
    let Some((key, hidden, dim)) = encoder_adapter_width(ckpt) else {
        return Ok(());
    };
    let expected = asked.bottleneck(dim);
    if (asked.encoder || asked.depth) && expected != hidden {
        bail!(
            "{}: holds encoder adapters {hidden} wide in a {dim}-wide block (`{key}`), but \
             --adapter-ratio {} makes them {expected} wide; pass the ratio they were trained \
             with (about {}), or start from a checkpoint without adapters",
            path.display(),
            asked.ratio,
            hidden as f64 / dim as f64
        );
    }
    Ok(())
}

fn check_unused(params: &Params, path: &Path, preset: &str) -> Result<()> {
    let unexpected = params.unused_keys();
    if unexpected.is_empty() {
        return Ok(());
    }
    let ckpt = params.source_tensors().context("checkpoint source")?;
    let shown: Vec<String> = unexpected
        .iter()
        .take(5)
        .map(|k| format!("`{k}` {:?}", ckpt.tensors.get(k).map(|t| t.dims())))
        .collect();
    // Depth adapters are built only for volumes: the likely mistake is a missing --3d.
    let hint = if adapter_file::infer_config(&unexpected).depth {
        "it holds depth adapters, which only a 3D model has: load it with --3d"
    } else {
        "is --model-config right for this file?"
    };
    bail!(
        "{}: {} key(s) are not part of the {preset} architecture with these adapters, e.g. {}; \
         {hint}",
        path.display(),
        unexpected.len(),
        shown.join(", ")
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_adapter(hidden: usize, dim: usize) -> Checkpoint {
        let key = "image_encoder.blocks.0.MLP_Adapter.D_fc1.weight".to_string();
        let t = candle_core::Tensor::zeros((hidden, dim), candle_core::DType::F32, &Device::Cpu)
            .unwrap();
        Checkpoint {
            path: std::path::PathBuf::from("adapted.safetensors"),
            tensors: BTreeMap::from([(key, t)]),
        }
    }

    fn encoder_at(ratio: f64) -> AdapterConfig {
        AdapterConfig {
            encoder: true,
            ratio,
            ..AdapterConfig::none()
        }
    }

    #[test]
    fn adapters_are_matched_by_the_width_a_ratio_builds() {
        let path = Path::new("adapted.safetensors");
        // 0.2 of 128 is 25.6, built 25 wide: the ratio read back (0.195) is not 0.2.
        assert!(check_adapter_ratio(path, &with_adapter(25, 128), &encoder_at(0.2)).is_ok());
        let e = check_adapter_ratio(path, &with_adapter(32, 128), &encoder_at(0.125))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("32 wide in a 128-wide block") && e.contains("about 0.25"),
            "{e}"
        );
        // Adapters that are not asked for are not checked here.
        assert!(check_adapter_ratio(path, &with_adapter(32, 128), &AdapterConfig::none()).is_ok());
    }
}
