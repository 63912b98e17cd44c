//! A volume from wherever a user keeps it: NIfTI, NRRD, or DICOM (a folder holding a
//! study, or one file).

use super::dicom::{self, SeriesChoice, SeriesSource};
use super::nifti::{self, NiftiVolume};
use super::nrrd;
use anyhow::Result;
use std::path::Path;

/// The volume in `path`: DICOM when it is a folder or a file with the DICOM magic (the
/// series `series` names, needed when there are several), NRRD when it is named `.nrrd`
/// or `.nhdr`, else NIfTI.
pub fn read(path: &Path, series: Option<&SeriesChoice>) -> Result<NiftiVolume> {
    Ok(read_source(path, series)?.0)
}

/// `read`, and for DICOM the series the volume came from.
pub fn read_source(
    path: &Path,
    series: Option<&SeriesChoice>,
) -> Result<(NiftiVolume, Option<SeriesSource>)> {
    if is_dicom(path) {
        let (volume, source) = dicom::read_source(path, series)?;
        return Ok((NiftiVolume::from_volume(volume), Some(source)));
    }
    if let Some(choice) = series {
        anyhow::bail!(
            "{}: --series {choice:?} applies to DICOM only; this is not a DICOM folder or file",
            path.display()
        );
    }
    if is_nrrd(path) {
        return Ok((NiftiVolume::from_volume(nrrd::read(path)?), None));
    }
    Ok((nifti::read(path)?, None))
}

/// A file named as NRRD (`.nrrd`, or a detached `.nhdr` header).
pub fn is_nrrd(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".nrrd") || name.ends_with(".nhdr")
}

/// A DICOM folder, or a file with the DICOM magic.
pub fn is_dicom(path: &Path) -> bool {
    path.is_dir() || dicom::study::is_dicom_file(path)
}
