//! `msa convert IN OUT`: a checkpoint to safetensors, or a volume (a DICOM series or file,
//! NIfTI or NRRD) to NIfTI or NRRD, as dcm2niix does: values after the modality rescale,
//! the geometry kept.

use crate::io::dicom::SeriesChoice;
use crate::io::volume_file;
use anyhow::Result;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// A checkpoint (.pth or safetensors), or a volume: a DICOM folder or file, NIfTI or
    /// NRRD.
    pub input: PathBuf,
    /// safetensors for a checkpoint; .nii, .nii.gz or .nrrd (gzip-encoded) for a volume.
    pub output: PathBuf,
    /// The DICOM series to convert, by number or UID, when the folder holds several.
    #[arg(long)]
    pub series: Option<String>,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    if is_volume(&args.input) {
        return volume(args);
    }
    let n = crate::weights::convert(&args.input, &args.output)?;
    println!("wrote {n} tensors to {}", args.output.display());
    Ok(())
}

/// A DICOM folder or file, or a file named as a NIfTI or NRRD volume.
fn is_volume(path: &Path) -> bool {
    let name = path.to_string_lossy();
    volume_file::is_dicom(path)
        || volume_file::is_nrrd(path)
        || name.ends_with(".nii")
        || name.ends_with(".nii.gz")
}

fn volume(args: &ConvertArgs) -> Result<()> {
    let series = args.series.as_deref().map(SeriesChoice::parse);
    let input = volume_file::read(&args.input, series.as_ref())?;
    let name = args.output.to_string_lossy();
    if name.ends_with(".nrrd") {
        let v = &input.volume;
        crate::io::nrrd::write(&args.output, v, crate::io::nrrd::Values::Float(&v.data))?;
    } else if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        crate::io::nifti::write_image(&args.output, &input)?;
    } else {
        anyhow::bail!(
            "{}: a volume converts to .nii, .nii.gz or .nrrd",
            args.output.display()
        );
    }
    let v = &input.volume;
    let (lo, hi) = v.min_max();
    println!(
        "{} -> {}: {:?} voxels, spacing {:?} mm, values {lo}..{hi}",
        args.input.display(),
        args.output.display(),
        v.dims,
        v.spacing
    );
    Ok(())
}
