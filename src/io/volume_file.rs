//! A volume from wherever a user keeps it: a NIfTI file, or a folder holding one DICOM
//! series.

use super::dicom;
use super::nifti::{self, NiftiVolume};
use anyhow::Result;
use std::path::Path;

/// The volume in `path`: a DICOM series when it is a folder, else a NIfTI file.
pub fn read(path: &Path) -> Result<NiftiVolume> {
    if path.is_dir() {
        return Ok(NiftiVolume::from_volume(dicom::read_series(path)?));
    }
    nifti::read(path)
}
