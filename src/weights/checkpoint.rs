//! Reading published checkpoints: PyTorch `.pth` (zip pickle) and safetensors.

use crate::io::atomic::write_atomically;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A flat state_dict read from disk, with wrappers and `module.` prefixes removed.
pub struct Checkpoint {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pth,
    Safetensors,
}

/// Tells the format from the first bytes: a zip archive is a `torch.save` file.
pub fn sniff_format(path: &Path) -> Result<Format> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let n = file
        .read(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if n >= 4 && head[..4] == *b"PK\x03\x04" {
        return Ok(Format::Pth);
    }
    if n == 8 {
        let header_len = u64::from_le_bytes(head);
        let file_len = file.metadata()?.len();
        // Checked: a length near u64::MAX wrapped around and passed (found by fuzzing).
        if header_len > 1 && header_len.checked_add(8).is_some_and(|n| n <= file_len) {
            return Ok(Format::Safetensors);
        }
    }
    if n >= 2 && head[0] == 0x80 {
        bail!(
            "{}: legacy (non-zip) PyTorch pickle; re-save it with torch>=1.6 `torch.save(sd, path)`",
            path.display()
        );
    }
    bail!(
        "{}: neither a PyTorch zip checkpoint nor a safetensors file (truncated or another format)",
        path.display()
    )
}

/// safetensors' own limit on the header.
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// The `__metadata__` strings of a safetensors file, from its header alone (no tensor is
/// read); an empty map when it has none (absent or null, as safetensors allows).
pub fn safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .with_context(|| format!("{}: shorter than a safetensors header", path.display()))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_SAFETENSORS_HEADER {
        bail!(
            "{}: a safetensors header of {len} bytes (at most {MAX_SAFETENSORS_HEADER})",
            path.display()
        );
    }
    let mut header = Vec::new();
    file.take(len)
        .read_to_end(&mut header)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: bad safetensors header", path.display()))?;
    let meta: Option<BTreeMap<String, String>> =
        serde_json::from_value(header.get("__metadata__").cloned().unwrap_or_default())
            .with_context(|| {
                format!("{}: `__metadata__` is not a map of strings", path.display())
            })?;
    Ok(meta.unwrap_or_default())
}

impl Checkpoint {
    pub fn read(path: &Path) -> Result<Self> {
        let raw = match sniff_format(path)? {
            Format::Pth => read_pth(path)?,
            Format::Safetensors => read_safetensors(path)?,
        };
        if raw.is_empty() {
            bail!("{}: the checkpoint holds no tensors", path.display());
        }
        let tensors = raw
            .into_iter()
            .map(|(k, v)| (canonical_key(strip_prefixes(&k)), v))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The tensor under `key`, as f32 on `device`.
    pub fn get_f32(&self, key: &str, device: &Device) -> Result<Option<Tensor>> {
        match self.tensors.get(key) {
            None => Ok(None),
            Some(t) => Ok(Some(t.to_dtype(DType::F32)?.to_device(device)?)),
        }
    }

    pub fn display(&self) -> String {
        self.path.display().to_string()
    }
}

impl From<Checkpoint> for crate::params::Source {
    fn from(ckpt: Checkpoint) -> Self {
        let label = ckpt.display();
        Self::Tensors(crate::params::NamedTensors {
            label,
            tensors: ckpt.tensors,
        })
    }
}

/// The PyTorch MSA code names the relative-position tables `attn.rel_h` / `attn.rel_w`;
/// SAM names them `attn.rel_pos_h` / `attn.rel_pos_w`.
fn canonical_key(key: &str) -> String {
    for (from, to) in [
        (".attn.rel_h", ".attn.rel_pos_h"),
        (".attn.rel_w", ".attn.rel_pos_w"),
    ] {
        if let Some(stem) = key.strip_suffix(from) {
            return format!("{stem}{to}");
        }
    }
    key.to_string()
}

fn strip_prefixes(key: &str) -> &str {
    let mut k = key;
    while let Some(rest) = k.strip_prefix("module.") {
        k = rest;
    }
    k
}

fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    Ok(map.into_iter().collect())
}

/// Official SAM files are a flat state_dict; training scripts wrap it as `{"model": ...}`
/// or `{"state_dict": ...}` next to other entries.
fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    super::pickle_scan::check_archive(path)?;
    let mut last_err = None;
    for key in [None, Some("model"), Some("state_dict")] {
        match candle_core::pickle::PthTensors::new(path, key) {
            Ok(pth) if !pth.tensor_infos().is_empty() => return load_all(path, &pth),
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) if !is_missing_key(&e) => Err(anyhow::anyhow!(
            "{}: cannot read the PyTorch archive (truncated or corrupt?): {e}",
            path.display()
        )),
        _ => bail!(
            "{}: no tensors found at the top level nor under `model` or `state_dict`",
            path.display()
        ),
    }
}

fn is_missing_key(e: &candle_core::Error) -> bool {
    e.to_string().contains("not found")
}

fn load_all(path: &Path, pth: &candle_core::pickle::PthTensors) -> Result<Vec<(String, Tensor)>> {
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let t = pth
            .get(name)
            .with_context(|| {
                format!(
                    "{}: cannot read tensor `{name}` (truncated or corrupt archive?)",
                    path.display()
                )
            })?
            .with_context(|| format!("{}: tensor `{name}` vanished", path.display()))?;
        out.push((name.clone(), t));
    }
    Ok(out)
}

/// Writes `tensors` as safetensors with string metadata, through a temporary file that is
/// synced and then renamed: a write that fails (a full disk, a file-size limit) or is
/// interrupted leaves the previous file under `path` as it was, and no temporary behind.
pub fn save_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::tensor::serialize(contiguous, metadata)
        .with_context(|| format!("cannot serialise {}", path.display()))?;
    write_atomically(path, &bytes)
}

/// `msa convert`: any readable checkpoint to safetensors with the same keys and dtypes.
pub fn convert(input: &Path, output: &Path) -> Result<usize> {
    let ckpt = Checkpoint::read(input)?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("source".to_string(), input.display().to_string());
    meta.insert(
        "converted_by".to_string(),
        format!("msa {}", env!("CARGO_PKG_VERSION")),
    );
    save_safetensors(output, &ckpt.tensors, Some(meta))?;
    Ok(ckpt.tensors.len())
}
