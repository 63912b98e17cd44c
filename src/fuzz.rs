//! Fuzz targets: every loader that reads user files, driven by arbitrary bytes. A target
//! may return any error; a panic, an abort or a hang is a bug. The fuzzer binary in `fuzz/`
//! and the corpus replay test (`tests/fuzz_corpus.rs`) both call `run`.

// No panic on user data (RELIABILITY.md): an index or unwrap here is either an error or
// carries its proof in an `expect(..., reason)`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use crate::io::DecodeLimits;
use std::path::{Path, PathBuf};

/// The targets by name.
pub const TARGETS: [&str; 11] = [
    "pth",
    "safetensors",
    "image",
    "nifti",
    "nrrd",
    "dicom",
    "dicom_compressed",
    "dicom_seg",
    "prompts",
    "run_config",
    "layouts",
];

/// Runs target `name` on `data`; false for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "pth" => drop(with_file(
            data,
            "input.pth",
            crate::weights::Checkpoint::read,
        )),
        "safetensors" => {
            drop(with_file(
                data,
                "input.safetensors",
                crate::weights::Checkpoint::read,
            ));
            drop(with_file(
                data,
                "input.safetensors",
                crate::weights::adapter_file::load,
            ));
        }
        "image" => drop(crate::io::image::decode_rgb(data, &small_limits())),
        "nifti" => drop(crate::io::nifti::read_bytes(data, "input", &small_limits())),
        "nrrd" => drop(crate::io::nrrd::read_bytes(data, "input", &small_limits())),
        // The same reader; its own seeds are compressed files (JPEG, JPEG-LS, RLE, JPEG
        // 2000, deflate) and the fuzzer's corpus is kept apart.
        "dicom" | "dicom_compressed" => drop(dicom(data)),
        "dicom_seg" => drop(dicom_seg(data)),
        "prompts" => prompts(data),
        "run_config" => run_config(data),
        "layouts" => drop(layouts(data)),
        _ => return false,
    }
    true
}

/// Limits that keep each run small (a fuzzer runs thousands per second).
fn small_limits() -> DecodeLimits {
    DecodeLimits {
        max_image_side: 4096,
        max_image_pixels: 1 << 22,
        max_voxels: 1 << 22,
        max_decompressed_bytes: 64 << 20,
    }
}

/// A scratch folder for this process and thread, emptied.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "msa-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn with_file<T>(data: &[u8], name: &str, read: impl FnOnce(&Path) -> T) -> Option<T> {
    let path = scratch().join(name);
    std::fs::write(&path, data).ok()?;
    Some(read(&path))
}

fn dicom(data: &[u8]) -> anyhow::Result<()> {
    let dir = scratch();
    std::fs::write(dir.join("slice.dcm"), data)?;
    crate::io::dicom::read_series(&dir)?;
    Ok(())
}

/// A segmentation read against a small series written once per process.
fn dicom_seg(data: &[u8]) -> anyhow::Result<()> {
    use std::sync::OnceLock;
    static SERIES: OnceLock<Option<(crate::io::Volume, crate::io::dicom::SeriesSource)>> =
        OnceLock::new();
    let series = SERIES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("msa-fuzz-series-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        for k in 0..3 {
            let path = dir.join(format!("s{k}.dcm"));
            crate::data::synthetic_dicom::write_slice(&path, "1.2.3.4", k, 2.5 * k as f64, (6, 8))
                .ok()?;
        }
        crate::io::dicom::read_source(&dir, None).ok()
    });
    let Some((volume, source)) = series else {
        anyhow::bail!("no series to read segmentations against");
    };
    let path = scratch().join("seg.dcm");
    std::fs::write(&path, data)?;
    crate::io::dicom::seg_labels::read(&path, source, volume.dims)?;
    Ok(())
}

fn prompts(data: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<crate::infer::volume::VolumePrompts>(data) {
        let _ = p.per_slice(64);
    }
    if let Ok(p) = serde_json::from_slice::<crate::io::prompt::PromptFile>(data) {
        if let Ok(u) = crate::io::prompt::UserPrompt::from_parts(&p.points, p.bbox) {
            let _ = u.check_inside(64, 64);
        }
    }
}

fn run_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = toml::from_str::<crate::train::config::TrainConfig>(text) {
        let _ = cfg.adapters();
        let _ = toml::to_string(&cfg);
    }
}

/// A file tree from the bytes: records of `[name length: u8][name][content length: u16 LE]
/// [content]`, names with `/` for folders (no `..`, at most 4 deep, 64 files), then every
/// dataset scanner on it.
fn layouts(data: &[u8]) -> anyhow::Result<()> {
    use crate::data::layout::{discover, DatasetKind};
    let root = scratch().join("data");
    std::fs::create_dir_all(&root)?;
    for (name, content) in tree_records(data).into_iter().take(64) {
        let path = root.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
    }
    for kind in [DatasetKind::Folder, DatasetKind::Isic, DatasetKind::Refuge] {
        let _ = discover(kind, &root, 0, 0.2);
    }
    if let Ok(d) = crate::data::decathlon::Decathlon::open(&root) {
        let (train, _) = d.holdout(1);
        if let Some(case) = train.first() {
            let _ = crate::data::decathlon::load_case(case);
        }
    }
    Ok(())
}

/// The (relative path, content) records of a `layouts` input; malformed names are skipped.
pub fn tree_records(mut data: &[u8]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    while let Some((&n, rest)) = data.split_first() {
        let Some((name, rest)) = split(rest, n as usize) else {
            break;
        };
        let Some((len, rest)) = split(rest, 2) else {
            break;
        };
        let Ok(len) = <[u8; 2]>::try_from(len) else {
            break;
        };
        let len = u16::from_le_bytes(len) as usize;
        let Some((content, rest)) = split(rest, len) else {
            break;
        };
        data = rest;
        if let Some(path) = safe_relative(name) {
            out.push((path, content.to_vec()));
        }
    }
    out
}

fn split(data: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (data.len() >= n).then(|| data.split_at(n))
}

fn safe_relative(name: &[u8]) -> Option<PathBuf> {
    let name = std::str::from_utf8(name).ok()?;
    let parts: Vec<&str> = name.split('/').collect();
    let ok = |p: &&str| {
        !p.is_empty() && *p != "." && *p != ".." && !p.contains('\0') && !p.contains('\\')
    };
    if parts.len() > 4 || !parts.iter().all(ok) {
        return None;
    }
    Some(parts.iter().collect())
}

/// One `layouts` record.
pub fn tree_record(name: &str, content: &[u8]) -> Vec<u8> {
    let mut out = vec![name.len() as u8];
    out.extend(name.as_bytes());
    out.extend((content.len() as u16).to_le_bytes());
    out.extend(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_records_round_trip_and_unsafe_names_are_dropped() {
        let mut bytes = tree_record("images/a.png", b"xyz");
        bytes.extend(tree_record("../escape.txt", b"no"));
        bytes.extend(tree_record("dataset.json", b"{}"));
        bytes.extend([3, b'a']);
        let r = tree_records(&bytes);
        let names: Vec<String> = r.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(names, ["images/a.png", "dataset.json"]);
        assert_eq!(r[0].1, b"xyz");
        assert!(!run("nope", b""));
    }
}
