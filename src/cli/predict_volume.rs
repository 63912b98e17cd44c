//! `msa predict-volume`: a label volume from a user's per-slice or 3D-box prompts.

use super::ModelArgs;
use crate::infer::volume::{class_overlay, segment_volume, SliceScaling, VolumePrompts};
use crate::io::dicom::seg::{self, Segment};
use crate::io::dicom::SeriesChoice;
use crate::io::nifti;
use crate::io::orientation::{Axis, Reorientation};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct PredictVolumeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A NIfTI volume (.nii, .nii.gz), or DICOM: a study folder or one file.
    #[arg(long)]
    pub image: PathBuf,
    /// The DICOM series to segment, by number or UID, when the folder holds several
    /// (`msa info FOLDER` lists them).
    #[arg(long)]
    pub series: Option<String>,
    /// The prompt JSON: per class label, points and boxes per slice, or a 3D box.
    #[arg(long)]
    pub prompts: PathBuf,
    /// The label volume to write, on the input's grid and affine: NIfTI (.nii, .nii.gz),
    /// NRRD (.nrrd), or a DICOM Segmentation (.dcm) of a DICOM input.
    #[arg(long)]
    pub out: PathBuf,
    /// The slices to segment: the volume is turned into this canonical frame first, and
    /// prompt coordinates are in it (see the README). Outputs are on the input's grid.
    #[arg(long, default_value = "axial")]
    pub axis: Axis,
    /// The output format; by default from the name of `--out`.
    #[arg(long, value_enum)]
    pub format: Option<LabelFormat>,
    /// One PNG per prompted slice with the labels drawn on it.
    #[arg(long)]
    pub overlay_dir: Option<PathBuf>,
    /// Intensity: a CT window `LO,HI` in HU or its name (abdomen, lung, bone, brain), or
    /// `mri`. Default: CT when the volume's minimum is below -500, else MRI scaling.
    #[arg(long)]
    pub window: Option<String>,
}

/// How a label volume is written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelFormat {
    /// NIfTI-1, uint8 labels.
    Nifti,
    /// NRRD, uint8 labels, gzip-encoded.
    Nrrd,
    /// DICOM Segmentation (binary), referring to the input series.
    DicomSeg,
}

impl LabelFormat {
    /// The format asked for, else the one `out`'s name implies.
    pub fn of(asked: Option<LabelFormat>, out: &Path) -> LabelFormat {
        let name = out.to_string_lossy().to_ascii_lowercase();
        asked.unwrap_or(if name.ends_with(".dcm") {
            LabelFormat::DicomSeg
        } else if name.ends_with(".nrrd") {
            LabelFormat::Nrrd
        } else {
            LabelFormat::Nifti
        })
    }
}

pub fn run(args: &PredictVolumeArgs) -> Result<()> {
    let device = crate::runtime::device::default_device()?;
    let series = args.series.as_deref().map(SeriesChoice::parse);
    let format = LabelFormat::of(args.format, &args.out);
    let (input, source) = crate::io::volume_file::read_source(&args.image, series.as_ref())?;
    if format == LabelFormat::DicomSeg && source.is_none() {
        anyhow::bail!(
            "{}: a DICOM SEG refers to DICOM source images; this input is not DICOM (write \
             .nii.gz instead)",
            args.image.display()
        );
    }
    let stored = &input.volume;
    let turn = Reorientation::of(&stored.affine, stored.dims, args.axis);
    let canonical = turn.volume(stored);
    let vol = &canonical;
    let scaling = SliceScaling::of(vol, args.window.as_deref())?;
    let range = scaling.range;
    println!(
        "{}: {:?} voxels as {:?} slices ({}), spacing {:?} mm; intensity {:?} ({}): values \
         {:.1}..{:.1} -> 0..255",
        args.image.display(),
        vol.dims,
        args.axis,
        if turn.is_identity() {
            "as stored"
        } else {
            "axes turned from the file's"
        },
        vol.spacing,
        scaling.intensity,
        scaling.why,
        range.0,
        range.1
    );
    let asked = VolumePrompts::load(&args.prompts)?;
    let prompts = asked
        .per_slice(vol.dims[2])
        .with_context(|| format!("prompts {}", args.prompts.display()))?;
    let loaded = args.model.load(&device)?;
    let bar = indicatif::ProgressBar::new(prompts.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "slices [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
    )?);
    let labels = segment_volume(&loaded.sam, vol, range, &prompts, |n| {
        bar.set_position(n as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    if let Some(dir) = &args.overlay_dir {
        write_overlays(dir, vol, range, &labels, prompts.keys().copied())?;
        println!("overlays -> {}", dir.display());
    }
    let labels = turn.undo(&labels);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match (format, &source) {
        (LabelFormat::DicomSeg, Some(source)) => {
            let segments: Vec<Segment> = asked
                .names()
                .into_iter()
                .map(|(label, name)| Segment { label, name })
                .collect();
            seg::write(&args.out, &labels, stored, source, &segments)?
        }
        (LabelFormat::Nrrd, _) => {
            crate::io::nrrd::write(&args.out, stored, crate::io::nrrd::Values::Labels(&labels))?
        }
        _ => nifti::write_labels(&args.out, &labels, &input)?,
    }
    let mut counts = std::collections::BTreeMap::new();
    for &l in labels.iter().filter(|&&l| l > 0) {
        *counts.entry(l).or_insert(0usize) += 1;
    }
    println!(
        "{} prompted slices; voxels per label {counts:?} -> {}",
        prompts.len(),
        args.out.display()
    );
    Ok(())
}

fn write_overlays(
    dir: &Path,
    vol: &crate::io::Volume,
    range: (f32, f32),
    labels: &[u8],
    slices: impl Iterator<Item = usize>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for k in slices {
        let path = dir.join(format!("slice_{k:04}.png"));
        class_overlay(vol, k, range, labels)?
            .save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
