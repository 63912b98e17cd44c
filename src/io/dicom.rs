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
    let normal = slice_normal(&slices[0].0.orientation);
    let along = |s: &Slice| dot(&s.position, &normal);
    slices.sort_by(|a, b| along(&a.0).total_cmp(&along(&b.0)));
    let first = &slices[0].0;
    let (rows, columns) = (first.rows, first.columns);
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
    let o = first.orientation;
    let columns_dir = [o[0], o[1], o[2]];
    let rows_dir = [o[3], o[4], o[5]];
    // World position of voxel (x, y, k) in DICOM's LPS; RAS negates the first two axes.
    let mut affine = [[0f32; 4]; 4];
    for r in 0..3 {
        let ras = if r < 2 { -1.0 } else { 1.0 };
        affine[r] = [
            (ras * columns_dir[r] * dc) as f32,
            (ras * rows_dir[r] * dr) as f32,
            (ras * normal[r] * slice_spacing) as f32,
            (ras * first.position[r]) as f32,
        ];
    }
    affine[3] = [0.0, 0.0, 0.0, 1.0];
    Ok(Volume {
        dims: [columns, rows, slices.len()],
        data,
        spacing: [dc as f32, dr as f32, slice_spacing as f32],
        affine,
    })
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok().flatten()?;
    e.to_str().ok().map(|s| s.trim().to_string())
}

fn floats(
    path: &Path,
    obj: &DefaultDicomObject,
    tag: dicom_core::Tag,
    name: &str,
    n: usize,
) -> Result<Vec<f64>> {
    let e = obj
        .element(tag)
        .with_context(|| format!("{}: no {name}", path.display()))?;
    let v = e
        .to_multi_float64()
        .with_context(|| format!("{}: {name} is not numeric", path.display()))?;
    if v.len() != n {
        bail!(
            "{}: {name} has {} values, expected {n}",
            path.display(),
            v.len()
        );
    }
    Ok(v)
}

fn slice_facts(path: &Path, obj: &DefaultDicomObject) -> Result<Slice> {
    let p = floats(
        path,
        obj,
        tags::IMAGE_POSITION_PATIENT,
        "ImagePositionPatient",
        3,
    )?;
    let o = floats(
        path,
        obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        "ImageOrientationPatient",
        6,
    )?;
    let s = floats(path, obj, tags::PIXEL_SPACING, "PixelSpacing", 2)?;
    let int = |tag, name: &str| -> Result<usize> {
        obj.element(tag)
            .with_context(|| format!("{}: no {name}", path.display()))?
            .to_int::<u32>()
            .map(|v| v as usize)
            .with_context(|| format!("{}: {name} is not an integer", path.display()))
    };
    Ok(Slice {
        path: path.to_path_buf(),
        position: [p[0], p[1], p[2]],
        orientation: [o[0], o[1], o[2], o[3], o[4], o[5]],
        pixel_spacing: [s[0], s[1]],
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
    let (a, b) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The median gap between sorted slice positions, if there are two slices or more.
fn slice_spacing(positions: &[f64]) -> Option<f64> {
    let mut gaps: Vec<f64> = positions.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_by(f64::total_cmp);
    Some(gaps[gaps.len() / 2]).filter(|g| *g > 0.0)
}
