//! Volumes uploaded to the page: NIfTI, NRRD, one DICOM file, or a DICOM series zipped, turned
//! into the canonical frame of axial slices for display and segmentation.

use super::error::ApiError;
use super::store::{Content, DicomUpload};
use crate::infer::volume::SliceScaling;
use crate::io::dicom::SeriesChoice;
use crate::io::nifti::{self, NiftiVolume};
use crate::io::nrrd;
use crate::io::orientation::{Axis, Reorientation};
use crate::io::{volume_file, DecodeLimits, Volume};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// Most files a zipped series may hold.
const MAX_ZIP_ENTRIES: usize = 20_000;

/// True when the bytes are a volume this module decodes (else they are a 2D image).
pub fn is_volume(bytes: &[u8]) -> bool {
    nifti::looks_like(bytes) || nrrd::looks_like(bytes) || is_zip(bytes) || is_dicom(bytes)
}

fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

fn is_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM".as_slice())
}

/// The uploaded volume, its intensity scaling chosen as `predict-volume --window` does and
/// `series` picking one of a zipped study's series.
pub fn decode_volume(
    bytes: &[u8],
    window: Option<&str>,
    series: Option<&str>,
    limits: &DecodeLimits,
) -> Result<Content, ApiError> {
    let (stored, dicom) = if nrrd::looks_like(bytes) {
        let v = nrrd::read_bytes(bytes, "the upload", limits).map_err(ApiError::bad_input)?;
        (NiftiVolume::from_volume(v), None)
    } else if nifti::looks_like(bytes) {
        let v = nifti::read_bytes(bytes, "the upload", limits).map_err(ApiError::bad_input)?;
        (v, None)
    } else {
        let files = unpack(bytes, limits).map_err(ApiError::bad_input)?;
        let choice = series.map(SeriesChoice::parse);
        let (v, source) = volume_file::read_source(files.path(), choice.as_ref())
            .map_err(|e| ApiError::bad_input(e.context("the uploaded DICOM")))?;
        let source =
            source.ok_or_else(|| ApiError::bad_request("the upload holds no DICOM series"))?;
        (v, Some(Box::new(DicomUpload { files, source })))
    };
    let turn = Reorientation::of(&stored.volume.affine, stored.volume.dims, Axis::Axial);
    let volume = NiftiVolume::from_volume(turn.volume(&stored.volume));
    let scaling = SliceScaling::of(&volume.volume, window).map_err(ApiError::bad_input)?;
    // The page names the upload's own field, not predict-volume's flag.
    let why = match window {
        Some(_) => "window",
        None => scaling.why.as_str(),
    };
    let grid = NiftiVolume {
        volume: Volume {
            data: vec![],
            ..stored.volume
        },
        header: stored.header,
    };
    Ok(Content::Volume {
        range: scaling.range,
        intensity: format!("{:?} ({why})", scaling.intensity),
        volume: Box::new(volume),
        turn,
        grid: Box::new(grid),
        dicom,
    })
}

/// A DICOM file, or the files of a zip, in a new temporary folder. A zip may expand to
/// `limits.max_decompressed_bytes` at most, whatever its entries claim.
fn unpack(bytes: &[u8], limits: &DecodeLimits) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("msa-upload-")
        .tempdir()
        .context("cannot make a folder for the upload")?;
    if is_dicom(bytes) {
        std::fs::write(dir.path().join("upload.dcm"), bytes).context("cannot keep the upload")?;
        return Ok(dir);
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .context("not a NIfTI, DICOM or zip file, or a damaged zip")?;
    if zip.len() > MAX_ZIP_ENTRIES {
        bail!(
            "the zip holds {} entries; at most {MAX_ZIP_ENTRIES} are read",
            zip.len()
        );
    }
    let mut left = limits.max_decompressed_bytes;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).with_context(|| format!("zip entry {i}"))?;
        let Some(name) = entry.enclosed_name() else {
            bail!("zip entry {i} has a name that points outside its folder");
        };
        if entry.is_dir() {
            continue;
        }
        let mut data = Vec::new();
        (&mut entry)
            .take(left + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("zip entry `{}` is damaged or cut short", name.display()))?;
        if data.len() as u64 > left {
            bail!(
                "the zip expands past {} bytes (MSA_MAX_DECOMPRESSED_BYTES)",
                limits.max_decompressed_bytes
            );
        }
        left -= data.len() as u64;
        keep(dir.path(), &name, &data)?;
    }
    Ok(dir)
}

fn keep(root: &Path, name: &Path, data: &[u8]) -> Result<()> {
    let path = root.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).context("cannot unpack the zip")?;
    }
    std::fs::write(&path, data).context("cannot unpack the zip")
}
