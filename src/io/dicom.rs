//! DICOM series (a folder of one CT or MR series) through dicom-rs (`dicom-object`,
//! `dicom-pixeldata`): slices sorted by their position along the slice normal, the
//! modality rescale applied, spacing and orientation from the headers.

use super::volume::Volume;
use anyhow::{bail, Context, Result};
use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject};
use dicom_pixeldata::PixelDecoder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One slice's header facts.
struct Slice {
    path: PathBuf,
    position: [f64; 3],
    /// Row direction (increasing column index), column direction (increasing row index).
    orientation: [f64; 6],
    /// (between rows, between columns), mm.
    pixel_spacing: [f64; 2],
    rows: usize,
    columns: usize,
    thickness: Option<f64>,
}

/// Reads the one image series in `dir` as a volume: x along the columns, y along the
/// rows, k along the sorted slices; the affine maps to RAS world coordinates like NIfTI.
pub fn read_series(dir: &Path) -> Result<Volume> {
    let mut series: BTreeMap<String, Vec<(Slice, DefaultDicomObject)>> = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the DICOM folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in entries {
        // Files that are not DICOM, or DICOM without an image (DICOMDIR), are skipped.
        let Ok(obj) = open_file(&path) else { continue };
        if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
            continue;
        }
        let uid = text(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        let slice = slice_facts(&path, &obj)?;
        series.entry(uid).or_default().push((slice, obj));
    }
    let mut series = series.into_iter();
    let Some((_, mut slices)) = series.next() else {
        bail!("{}: no DICOM image files found", dir.display());
    };
    if let Some((uid, more)) = series.next() {
        bail!(
            "{}: holds more than one series (another one is {uid}, {} files); expected one series per folder",
            dir.display(),
            more.len()
        );
    }
    // A series exists only once a file was added to it, so `slices` is never empty here.
    let normal = slices
        .first()
        .map(|(s, _)| slice_normal(&s.orientation))
        .unwrap_or_default();
    let along = |s: &Slice| dot(&s.position, &normal);
    slices.sort_by(|a, b| along(&a.0).total_cmp(&along(&b.0)));
    let Some((first, _)) = slices.first() else {
        bail!("{}: no DICOM image files found", dir.display());
    };
    let (rows, columns) = (first.rows, first.columns);
    super::DecodeLimits::from_env()
        .check_voxels(&[columns, rows, slices.len()])
        .with_context(|| format!("{}: refused before decoding", dir.display()))?;
    let mut data = Vec::with_capacity(rows * columns * slices.len());
    for (s, obj) in &slices {
        if (s.rows, s.columns) != (rows, columns) {
            bail!(
                "{}: {} x {} pixels, but {} has {rows} x {columns}",
                s.path.display(),
                s.rows,
                s.columns,
                first.path.display()
            );
        }
        check_pixels(&s.path, obj, rows * columns)?;
        let pixels = obj
            .decode_pixel_data()
            .with_context(|| format!("{}: cannot decode the pixel data (compressed transfer syntaxes are not supported yet)", s.path.display()))?;
        let values: Vec<f32> = pixels
            .to_vec()
            .with_context(|| format!("{}: cannot convert the pixel data", s.path.display()))?;
        if values.len() != rows * columns {
            bail!(
                "{}: {} pixel values for {rows} x {columns} (one frame of one sample expected)",
                s.path.display(),
                values.len()
            );
        }
        data.extend_from_slice(&values);
    }
    let slice_spacing = slice_spacing(&slices.iter().map(|(s, _)| along(s)).collect::<Vec<_>>())
        .or(first.thickness)
        .unwrap_or(1.0);
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
    let affine = [
        row(0, -1.0),
        row(1, -1.0),
        row(2, 1.0),
        [0.0, 0.0, 0.0, 1.0],
    ];
    Ok(Volume {
        dims: [columns, rows, slices.len()],
        data,
        spacing: [dc as f32, dr as f32, slice_spacing as f32],
        affine,
    })
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
        None => bail!(
            "{}: encapsulated (compressed) pixel data is not supported yet",
            path.display()
        ),
    }
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok().flatten()?;
    e.to_str().ok().map(|s| s.trim().to_string())
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

fn slice_facts(path: &Path, obj: &DefaultDicomObject) -> Result<Slice> {
    let p = floats(
        path,
        obj,
        tags::IMAGE_POSITION_PATIENT,
        "ImagePositionPatient",
    )?;
    let o = floats(
        path,
        obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        "ImageOrientationPatient",
    )?;
    let s = floats(path, obj, tags::PIXEL_SPACING, "PixelSpacing")?;
    let int = |tag, name: &str| -> Result<usize> {
        obj.element(tag)
            .with_context(|| format!("{}: no {name}", path.display()))?
            .to_int::<u32>()
            .map(|v| v as usize)
            .with_context(|| format!("{}: {name} is not an integer", path.display()))
    };
    Ok(Slice {
        path: path.to_path_buf(),
        position: p,
        orientation: o,
        pixel_spacing: s,
        rows: int(tags::ROWS, "Rows")?,
        columns: int(tags::COLUMNS, "Columns")?,
        thickness: obj
            .element_opt(tags::SLICE_THICKNESS)
            .ok()
            .flatten()
            .and_then(|e| e.to_float64().ok()),
    })
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
