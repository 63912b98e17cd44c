//! The models a server offers: each base checkpoint, and each adapter file on the base it
//! was trained for. All are loaded at start, so that a bad file stops the server at once
//! rather than a user's click later.

use crate::model::precision::Precision;
use crate::model::Sam;
use crate::weights::{load_model, LoadOptions};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One loaded model: a base alone, or a base with one adapter file.
pub struct ServedModel {
    pub base: String,
    pub adapters: Option<String>,
    pub sam: Arc<Sam>,
}

impl ServedModel {
    /// Name of this model's image embeddings: adapters inside the encoder change them.
    pub fn key(&self) -> String {
        match &self.adapters {
            Some(a) => format!("{}+{a}", self.base),
            None => self.base.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BaseInfo {
    pub name: String,
    pub preset: String,
    pub backbone: String,
    pub image_size: usize,
    /// The image encoder's dtype (`--precision`).
    pub precision: Precision,
    pub default: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdapterInfo {
    pub name: String,
    pub base: String,
    /// Slices encoded together by depth adapters; absent for 2D adapters.
    pub depth_chunk: Option<usize>,
    pub trainable_params: usize,
}

pub struct ModelSet {
    models: Vec<ServedModel>,
    pub bases: Vec<BaseInfo>,
    pub adapters: Vec<AdapterInfo>,
}

impl ModelSet {
    /// Loads every checkpoint (the first is the default) as `base` says (architecture,
    /// encoder dtype), and places each adapter file on the first base it fits.
    pub fn load(
        checkpoints: &[PathBuf],
        adapter_files: &[PathBuf],
        base: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        if checkpoints.is_empty() {
            bail!("no checkpoint to serve: pass --checkpoint");
        }
        let mut set = Self {
            models: vec![],
            bases: vec![],
            adapters: vec![],
        };
        for path in checkpoints {
            set.add_base(path, base, device)?;
        }
        for file in adapter_files {
            set.add_adapters(checkpoints, file, base, device)?;
        }
        Ok(set)
    }

    fn add_base(&mut self, path: &Path, base: &LoadOptions, device: &Device) -> Result<()> {
        let loaded = load_model(path, base, device)?;
        let name = unique_name(stem(path), self.bases.iter().map(|b| &b.name));
        self.bases.push(BaseInfo {
            name: name.clone(),
            preset: loaded.preset.clone(),
            backbone: loaded.sam.config.backbone_name().to_string(),
            image_size: loaded.sam.config.img_size,
            precision: Precision::of(base.encoder_dtype),
            default: self.bases.is_empty(),
        });
        self.models.push(ServedModel {
            base: name,
            adapters: None,
            sam: Arc::new(loaded.sam),
        });
        Ok(())
    }

    fn add_adapters(
        &mut self,
        checkpoints: &[PathBuf],
        file: &Path,
        base_opts: &LoadOptions,
        device: &Device,
    ) -> Result<()> {
        let mut reasons = vec![];
        for (ckpt, base) in checkpoints.iter().zip(self.bases.clone()) {
            let opts = LoadOptions {
                adapters_file: Some(file),
                ..base_opts.clone()
            };
            match load_model(ckpt, &opts, device) {
                Ok(loaded) => {
                    let name =
                        unique_name(adapter_name(file), self.adapters.iter().map(|a| &a.name));
                    self.adapters.push(AdapterInfo {
                        name: name.clone(),
                        base: base.name.clone(),
                        depth_chunk: loaded.sam.depth_chunk(),
                        trainable_params: loaded.adapter_params,
                    });
                    self.models.push(ServedModel {
                        base: base.name,
                        adapters: Some(name),
                        sam: Arc::new(loaded.sam),
                    });
                    return Ok(());
                }
                Err(e) => reasons.push(format!("{}: {e:#}", base.name)),
            }
        }
        bail!(
            "{} fits none of the served checkpoints:\n  {}",
            file.display(),
            reasons.join("\n  ")
        )
    }

    /// The model for a request: the adapters' own base when adapters are named, else the
    /// named base, else the default.
    pub fn find(&self, base: Option<&str>, adapters: Option<&str>) -> Result<&ServedModel> {
        if let Some(a) = adapters {
            let found = self
                .models
                .iter()
                .find(|m| m.adapters.as_deref() == Some(a))
                .with_context(|| {
                    format!(
                        "unknown adapters `{a}`; this server has {}",
                        names(self.adapters.iter().map(|x| &x.name))
                    )
                })?;
            if let Some(b) = base.filter(|b| *b != found.base) {
                bail!("adapters `{a}` belong to model `{}`, not `{b}`", found.base);
            }
            return Ok(found);
        }
        let first = self
            .bases
            .first()
            .map(|b| b.name.as_str())
            .unwrap_or_default();
        let base = base.unwrap_or(first);
        self.models
            .iter()
            .find(|m| m.adapters.is_none() && m.base == base)
            .with_context(|| {
                format!(
                    "unknown model `{base}`; this server has {}",
                    names(self.bases.iter().map(|x| &x.name))
                )
            })
    }
}

fn stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    for ext in [".safetensors", ".pth", ".pt", ".bin"] {
        if let Some(s) = name.strip_suffix(ext) {
            return s.to_string();
        }
    }
    name
}

/// `run/adapters_best` for `.../run/adapters_best.safetensors`: training runs all write
/// the same file names, their folders tell them apart.
fn adapter_name(path: &Path) -> String {
    let folder = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    match folder {
        Some(f) => format!("{f}/{}", stem(path)),
        None => stem(path),
    }
}

fn unique_name<'a>(name: String, taken: impl Iterator<Item = &'a String> + Clone) -> String {
    let clash = |n: &str| taken.clone().any(|t| t == n);
    if !clash(&name) {
        return name;
    }
    (2..)
        .map(|i| format!("{name}-{i}"))
        .find(|n| !clash(n))
        .unwrap_or(name)
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<String> = it.map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
