//! One DICOM image series read as a volume through dicom-rs (`dicom-object`,
//! `dicom-pixeldata`, with its pure-Rust JPEG, JPEG-LS-free, RLE, deflate and JPEG 2000
//! codecs): slices sorted by their position along the slice normal, the modality rescale
//! applied, spacing and orientation from the headers. Files are decoded one at a time.

use super::study::{self, Series, SeriesChoice};
use crate::io::volume::Volume;
use anyhow::{bail, Context, Result};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;
use std::path::{Path, PathBuf};

/// One slice's header facts.
struct Slice {
    path: PathBuf,
    /// (SOP class UID, SOP instance UID), where the header has both.
    sop: Option<(String, String)>,
    position: [f64; 3],
    /// Row direction (increasing column index), column direction (increasing row index).
    orientation: [f64; 6],
    /// (between rows, between columns), mm.
    pixel_spacing: [f64; 2],
    rows: usize,
    columns: usize,
    thickness: Option<f64>,
}

/// Reads the one image series in `path` (a folder, nested folders included, or one file)
/// as a volume; see `read`.
pub fn read_series(path: &Path) -> Result<Volume> {
    read(path, None)
}

/// Reads the series `choice` names in `path` (or its only one) as a volume: x along the
/// columns, y along the rows, k along the sorted slices; the affine maps to RAS world
/// coordinates like NIfTI.
pub fn read(path: &Path, choice: Option<&SeriesChoice>) -> Result<Volume> {
    Ok(read_source(path, choice)?.0)
}

/// Where a volume read from a series came from: the files of its slices, in slice order,
/// and its geometry as DICOM gives it. A DICOM SEG of the volume refers to these.
#[derive(Debug, Clone)]
pub struct SeriesSource {
    pub series: Series,
    /// Slice k's file and ImagePositionPatient.
    pub slices: Vec<(PathBuf, [f64; 3])>,
    /// Slice k's (SOP class UID, SOP instance UID), where its header has both.
    instances: Vec<Option<(String, String)>>,
    pub orientation: [f64; 6],
    /// (between rows, between columns), mm.
    pub pixel_spacing: [f64; 2],
}

impl SeriesSource {
    /// The header (no pixels) of slice k's file.
    pub fn header(&self, k: usize) -> Result<DefaultDicomObject> {
        let (path, _) = self.slices.get(k).context("no such source slice")?;
        study::open(path, false)?.with_context(|| format!("{}: no pixel data", path.display()))
    }

    /// (SOP class UID, SOP instance UID) of every slice, in slice order, as their headers
    /// gave them when the series was read.
    pub fn instances(&self) -> Result<Vec<(String, String)>> {
        self.slices
            .iter()
            .zip(&self.instances)
            .map(|((path, _), sop)| {
                sop.clone().with_context(|| {
                    format!("{}: no SOPClassUID or SOPInstanceUID", path.display())
                })
            })
            .collect()
    }
}

/// `read`, and where the volume came from.
pub fn read_source(path: &Path, choice: Option<&SeriesChoice>) -> Result<(Volume, SeriesSource)> {
    let series = study::pick(path, choice)?;
    read_picked(&series)
}

/// Reads the files of one series.
pub fn read_picked(series: &Series) -> Result<(Volume, SeriesSource)> {
    let mut slices = Vec::with_capacity(series.files.len());
    for path in &series.files {
        let Some(obj) = study::open(path, false)? else {
            continue;
        };
        slices.push(slice_facts(path, &obj, series.files.len() == 1)?);
    }
    let normal = slices
        .first()
        .map(|s| slice_normal(&s.orientation))
        .unwrap_or_default();
    let along = |s: &Slice| dot(&s.position, &normal);
    slices.sort_by(|a, b| along(a).total_cmp(&along(b)));
    let Some(first) = slices.first() else {
        bail!("series {}: no DICOM image files found", series.uid);
    };
    let (rows, columns) = (first.rows, first.columns);
    if rows == 0 || columns == 0 {
        bail!(
            "{}: {columns} x {rows} pixels; an image has at least one",
            first.path.display()
        );
    }
    if let Some(tilted) = slices
        .iter()
        .find(|s| !same_orientation(&s.orientation, &first.orientation))
    {
        bail!(
            "series {}: not a volume: {} has ImageOrientationPatient {:?}, but {} has {:?} \
             (a localizer or projection series?)",
            series.uid,
            tilted.path.display(),
            tilted.orientation,
            first.path.display(),
            first.orientation
        );
    }
    crate::io::DecodeLimits::from_env()
        .check_voxels(&[columns, rows, slices.len()])
        .with_context(|| format!("series {}: refused before decoding", series.uid))?;
    let mut data = Vec::with_capacity(rows * columns * slices.len());
    for s in &slices {
        if (s.rows, s.columns) != (rows, columns) {
            bail!(
                "{}: {} x {} pixels, but {} has {rows} x {columns}",
                s.path.display(),
                s.rows,
                s.columns,
                first.path.display()
            );
        }
        data.extend_from_slice(&decode(&s.path, rows, columns)?);
    }
    let positions: Vec<f64> = slices.iter().map(along).collect();
    check_even(&series.uid, &slices, &positions)?;
    let volume = Volume {
        dims: [columns, rows, slices.len()],
        data,
        spacing: [0.0; 3],
        affine: [[0.0; 4]; 4],
    }
    .placed(first, normal, &positions);
    let source = SeriesSource {
        series: series.clone(),
        instances: slices.iter().map(|s| s.sop.clone()).collect(),
        orientation: first.orientation,
        pixel_spacing: first.pixel_spacing,
        slices: slices
            .iter()
            .map(|s| (s.path.clone(), s.position))
            .collect(),
    };
    Ok((volume, source))
}

impl Volume {
    /// The spacing and RAS affine of a volume whose first slice is `first`.
    fn placed(mut self, first: &Slice, normal: [f64; 3], positions: &[f64]) -> Self {
        let slice_spacing = slice_spacing(positions).or(first.thickness).unwrap_or(1.0);
        let [dr, dc] = first.pixel_spacing;
        let [c0, c1, c2, r0, r1, r2] = first.orientation;
        let (columns_dir, rows_dir) = ([c0, c1, c2], [r0, r1, r2]);
        // World position of voxel (x, y, k) in DICOM's LPS; RAS negates the first two axes.
        let row = |r: usize, ras: f64| {
            let at = |v: &[f64; 3]| v.get(r).copied().unwrap_or(0.0);
            [
                (ras * at(&columns_dir) * dc) as f32,
                (ras * at(&rows_dir) * dr) as f32,
                (ras * at(&normal) * slice_spacing) as f32,
                (ras * at(&first.position)) as f32,
            ]
        };
        self.affine = [
            row(0, -1.0),
            row(1, -1.0),
            row(2, 1.0),
            [0.0, 0.0, 0.0, 1.0],
        ];
        self.spacing = [dc as f32, dr as f32, slice_spacing as f32];
        self
    }
}

/// The rescaled values of one file's single frame of `rows` x `columns` pixels.
fn decode(path: &Path, rows: usize, columns: usize) -> Result<Vec<f32>> {
    let pixels = rows * columns;
    let Some(obj) = study::open(path, true)? else {
        bail!("{}: no pixel data", path.display());
    };
    check_pixels(path, &obj, pixels)?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    super::frame::check(path, &obj, &ts, rows, columns)?;
    // A decoder that panics on a malformed frame gives an error, as for 2D images.
    let decoded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.decode_pixel_data()))
            .map_err(|_| {
                anyhow::anyhow!("{}: the decoder failed on malformed data", path.display())
            })?
            .with_context(|| {
                format!(
                    "{}: cannot decode its pixel data (transfer syntax {ts}{})",
                    path.display(),
                    transfer_syntax_name(&ts)
                )
            })?;
    let values: Vec<f32> = decoded
        .to_vec()
        .with_context(|| format!("{}: cannot convert the pixel data", path.display()))?;
    if values.len() != pixels {
        bail!(
            "{}: {} pixel values for {pixels} pixels (one frame of one sample expected)",
            path.display(),
            values.len()
        );
    }
    Ok(values)
}

/// ", NAME" for a transfer syntax dicom-rs knows, else nothing.
fn transfer_syntax_name(uid: &str) -> String {
    use dicom_encoding::TransferSyntaxIndex;
    dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uid)
        .map(|ts| format!(", {}", ts.name()))
        .unwrap_or_default()
}

/// What the pixel decoder is given must be one frame of one sample, 1 to 32 bits stored (it
/// asserts that, and panicked on files outside it), and native pixel data long enough for
/// `pixels` pixels, so that no buffer is sized from a header the data does not back.
fn check_pixels(path: &Path, obj: &DefaultDicomObject, pixels: usize) -> Result<()> {
    let int = |tag, name: &str| -> Result<u32> {
        obj.element(tag)
            .with_context(|| format!("{}: no {name}", path.display()))?
            .to_int::<u32>()
            .with_context(|| format!("{}: {name} is not an integer", path.display()))
    };
    let optional = |tag, name: &str| -> Result<u32> {
        match obj.element_opt(tag).ok().flatten() {
            Some(_) => int(tag, name),
            None => Ok(1),
        }
    };
    let samples = optional(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
    let frames = optional(tags::NUMBER_OF_FRAMES, "NumberOfFrames")?;
    if samples != 1 || frames > 1 {
        bail!(
            "{}: {samples} sample(s) per pixel and {frames} frame(s); one frame of one sample \
             (grayscale) expected",
            path.display()
        );
    }
    let allocated = int(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let stored = int(tags::BITS_STORED, "BitsStored")?;
    if !(1..=32).contains(&stored) || stored > allocated {
        bail!(
            "{}: BitsStored is {stored} with BitsAllocated {allocated}; expected 1 to 32 bits, \
             no more than allocated",
            path.display()
        );
    }
    let needed = (pixels as u64 * allocated as u64).div_ceil(8);
    let held = obj
        .element(tags::PIXEL_DATA)
        .ok()
        .and_then(|e| e.value().primitive().map(|p| p.calculate_byte_len()));
    match held {
        Some(held) if (held as u64) < needed => bail!(
            "{}: PixelData holds {held} bytes; {pixels} pixels of {allocated} bits need {needed}",
            path.display()
        ),
        Some(_) => Ok(()),
        // Encapsulated (compressed) frames: their codec checks what they hold.
        None => Ok(()),
    }
}

fn floats<const N: usize>(
    path: &Path,
    obj: &DefaultDicomObject,
    tag: dicom_core::Tag,
    name: &str,
) -> Result<[f64; N]> {
    let e = obj
        .element(tag)
        .with_context(|| format!("{}: no {name}", path.display()))?;
    let v = e
        .to_multi_float64()
        .with_context(|| format!("{}: {name} is not numeric", path.display()))?;
    let n = v.len();
    <[f64; N]>::try_from(v)
        .map_err(|_| anyhow::anyhow!("{}: {name} has {n} values, expected {N}", path.display()))
}

/// A slice's header facts. A lone image without patient geometry (a secondary capture,
/// a projection) is placed at the origin, axis-aligned, with a warning; in a series of
/// several, slices without positions cannot be ordered and are refused.
fn slice_facts(path: &Path, obj: &DefaultDicomObject, alone: bool) -> Result<Slice> {
    let present = |tag| obj.element_opt(tag).ok().flatten().is_some();
    let placed = present(tags::IMAGE_POSITION_PATIENT) && present(tags::IMAGE_ORIENTATION_PATIENT);
    let (position, orientation) = if placed || !alone {
        (
            floats(
                path,
                obj,
                tags::IMAGE_POSITION_PATIENT,
                "ImagePositionPatient",
            )?,
            floats(
                path,
                obj,
                tags::IMAGE_ORIENTATION_PATIENT,
                "ImageOrientationPatient",
            )?,
        )
    } else {
        tracing::warn!(
            "{}: no ImagePositionPatient or ImageOrientationPatient; placed at the origin, \
             rows along y and columns along x",
            path.display()
        );
        ([0.0; 3], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    };
    let pixel_spacing = if present(tags::PIXEL_SPACING) || !alone {
        floats(path, obj, tags::PIXEL_SPACING, "PixelSpacing")?
    } else {
        [1.0, 1.0]
    };
    let int = |tag, name: &str| -> Result<usize> {
        obj.element(tag)
            .with_context(|| format!("{}: no {name}", path.display()))?
            .to_int::<u32>()
            .map(|v| v as usize)
            .with_context(|| format!("{}: {name} is not an integer", path.display()))
    };
    let sop = study::text(obj, tags::SOP_CLASS_UID).zip(study::text(obj, tags::SOP_INSTANCE_UID));
    Ok(Slice {
        path: path.to_path_buf(),
        sop,
        position,
        orientation,
        pixel_spacing,
        rows: int(tags::ROWS, "Rows")?,
        columns: int(tags::COLUMNS, "Columns")?,
        thickness: obj
            .element_opt(tags::SLICE_THICKNESS)
            .ok()
            .flatten()
            .and_then(|e| e.to_float64().ok()),
    })
}

/// Refuses slices whose positions are not evenly spaced: two at one position (two
/// reconstructions sharing a series UID) or a gap where a slice is missing. A volume built
/// from them would place every later slice wrongly.
fn check_even(uid: &str, slices: &[Slice], positions: &[f64]) -> Result<()> {
    let Some(step) = slice_spacing(positions) else {
        if slices.len() > 1 {
            bail!(
                "series {uid}: its {} slices all lie at one position",
                slices.len()
            );
        }
        return Ok(());
    };
    let pairs = slices.iter().zip(slices.iter().skip(1));
    let gaps = positions
        .iter()
        .zip(positions.iter().skip(1))
        .map(|(p, q)| q - p);
    for ((a, b), gap) in pairs.zip(gaps) {
        if (gap.abs() - step).abs() > 0.1 * step {
            bail!(
                "series {uid}: {} and {} are {:.3} mm apart, but the slices are {step:.3} mm \
                 apart elsewhere (a missing or doubled slice?)",
                a.path.display(),
                b.path.display(),
                gap.abs()
            );
        }
    }
    Ok(())
}

/// Orientations equal to 1e-4 (direction cosines are written with a few digits).
fn same_orientation(a: &[f64; 6], b: &[f64; 6]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
}

fn slice_normal(o: &[f64; 6]) -> [f64; 3] {
    let [a0, a1, a2, b0, b1, b2] = *o;
    [a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0]
}

fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The median gap between sorted slice positions, if there are two slices or more.
fn slice_spacing(positions: &[f64]) -> Option<f64> {
    let mut gaps: Vec<f64> = positions
        .iter()
        .zip(positions.iter().skip(1))
        .map(|(a, b)| (b - a).abs())
        .collect();
    gaps.sort_by(f64::total_cmp);
    gaps.get(gaps.len() / 2).copied().filter(|g| *g > 0.0)
}
