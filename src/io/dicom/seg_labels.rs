//! A DICOM Segmentation read back as a label volume on the grid of its source series (for
//! `msa eval` and training labels): segment n becomes label n. Each frame is placed on the
//! slice whose SOP instance it was derived from, else on the slice at its plane position.
//! Binary segmentations, and fractional ones thresholded at one half, are read.

use super::series::SeriesSource;
use super::study::{self, text};
use anyhow::{bail, Context, Result};
use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemDicomObject;
use dicom_object::DefaultDicomObject;
use std::path::Path;

/// The labels (x-fastest, `dims` of the volume read from `source`) that the SEG at `path`
/// holds.
pub fn read(path: &Path, source: &SeriesSource, dims: [usize; 3]) -> Result<Vec<u8>> {
    let obj = study::open(path, true)?
        .with_context(|| format!("{}: a DICOM file without pixel data", path.display()))?;
    let at = |what: &str| format!("{}: {what}", path.display());
    if text(&obj, tags::SOP_CLASS_UID).as_deref() != Some(uids::SEGMENTATION_STORAGE) {
        bail!(
            "{}",
            at("not a DICOM Segmentation (SOP class 1.2.840.10008.5.1.4.1.1.66.4)")
        );
    }
    let [nx, ny, nz] = dims;
    let (rows, columns) = (int(&obj, tags::ROWS), int(&obj, tags::COLUMNS));
    if (rows, columns) != (ny, nx) {
        bail!(
            "{}",
            at(&format!(
                "frames are {columns} x {rows}; the series' slices are {nx} x {ny}"
            ))
        );
    }
    let frames = int(&obj, tags::NUMBER_OF_FRAMES).max(1);
    let pixels = frame_pixels(&obj, frames, nx * ny).with_context(|| at("pixel data"))?;
    let per_frame = items(&obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if per_frame.len() != frames {
        bail!(
            "{}",
            at(&format!(
                "{} per-frame groups for {frames} frames",
                per_frame.len()
            ))
        );
    }
    let instances: Vec<String> = source
        .instances()?
        .into_iter()
        .map(|(_, uid)| uid)
        .collect();
    let mut labels = vec![0u8; nx * ny * nz];
    for (f, (group, on)) in per_frame.iter().zip(pixels.chunks(nx * ny)).enumerate() {
        let segment = nested(group, &[tags::SEGMENT_IDENTIFICATION_SEQUENCE])
            .and_then(|i| {
                i.element(tags::REFERENCED_SEGMENT_NUMBER)
                    .ok()?
                    .to_int::<u32>()
                    .ok()
            })
            .with_context(|| at(&format!("frame {} names no segment", f + 1)))?;
        let label = u8::try_from(segment)
            .ok()
            .filter(|l| *l > 0)
            .with_context(|| at(&format!("segment {segment} is not a label 1..=255")))?;
        let k = slice_of(group, &instances, source)
            .with_context(|| at(&format!("frame {} lies on no slice of the series", f + 1)))?;
        let plane = labels
            .get_mut(k * nx * ny..(k + 1) * nx * ny)
            .context("slice index")?;
        for (l, &p) in plane.iter_mut().zip(on) {
            if p {
                *l = label;
            }
        }
    }
    Ok(labels)
}

/// Each frame's pixels as booleans: binary frames packed a bit a pixel across frames,
/// fractional ones a byte a pixel, at least half of their maximum.
fn frame_pixels(obj: &DefaultDicomObject, frames: usize, pixels: usize) -> Result<Vec<bool>> {
    let bits = int(obj, tags::BITS_ALLOCATED);
    let kind = text(obj, tags::SEGMENTATION_TYPE).unwrap_or_default();
    let data = obj
        .element(tags::PIXEL_DATA)
        .ok()
        .and_then(|e| e.value().primitive().map(|p| p.to_bytes().into_owned()))
        .context("encapsulated (compressed) segmentation frames are not supported")?;
    let needed = frames * pixels;
    match (kind.as_str(), bits) {
        ("BINARY", 1) => {
            if data.len() * 8 < needed {
                bail!("{} bytes hold fewer than {needed} bits", data.len());
            }
            Ok((0..needed)
                .map(|i| data.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1))
                .collect())
        }
        ("FRACTIONAL", 8) => {
            if data.len() < needed {
                bail!("{} bytes for {needed} pixels", data.len());
            }
            let max = int(obj, tags::MAXIMUM_FRACTIONAL_VALUE).max(1);
            Ok(data.iter().take(needed).map(|&v| 2 * v as usize >= max).collect())
        }
        _ => bail!("SegmentationType {kind} with {bits} bits allocated; expected BINARY (1) or FRACTIONAL (8)"),
    }
}

/// The slice a frame lies on: its source instance, else its position along the normal.
fn slice_of(
    group: &InMemDicomObject,
    instances: &[String],
    source: &SeriesSource,
) -> Option<usize> {
    let by_instance = nested(
        group,
        &[tags::DERIVATION_IMAGE_SEQUENCE, tags::SOURCE_IMAGE_SEQUENCE],
    )
    .and_then(|i| {
        let uid = i
            .element(tags::REFERENCED_SOP_INSTANCE_UID)
            .ok()?
            .to_str()
            .ok()?;
        Some(uid.trim_end_matches(['\0', ' ']).to_string())
    })
    .and_then(|uid| instances.iter().position(|u| *u == uid));
    if by_instance.is_some() {
        return by_instance;
    }
    let position = nested(group, &[tags::PLANE_POSITION_SEQUENCE]).and_then(|i| {
        i.element(tags::IMAGE_POSITION_PATIENT)
            .ok()?
            .to_multi_float64()
            .ok()
    })?;
    let [a0, a1, a2, b0, b1, b2] = source.orientation;
    let normal = [a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0];
    let along = |p: &[f64]| p.iter().zip(&normal).map(|(x, n)| x * n).sum::<f64>();
    let here = along(&position);
    let positions: Vec<f64> = source.slices.iter().map(|(_, p)| along(p)).collect();
    let step = positions
        .iter()
        .zip(positions.iter().skip(1))
        .map(|(a, b)| (b - a).abs())
        .fold(f64::INFINITY, f64::min);
    // Within half a slice of one; a lone slice allows half a millimetre.
    let tolerance = if step.is_finite() { step / 2.0 } else { 0.5 };
    let (k, gap) = positions
        .iter()
        .map(|p| (p - here).abs())
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    (gap < tolerance).then_some(k)
}

fn items(obj: &DefaultDicomObject, tag: Tag) -> Vec<InMemDicomObject> {
    obj.element(tag)
        .ok()
        .and_then(|e| e.items().map(|i| i.to_vec()))
        .unwrap_or_default()
}

/// The first item at the end of a path of sequences.
fn nested(item: &InMemDicomObject, path: &[Tag]) -> Option<InMemDicomObject> {
    let mut at = item.clone();
    for &tag in path {
        at = at.element(tag).ok()?.items()?.first()?.clone();
    }
    Some(at)
}

fn int(obj: &DefaultDicomObject, tag: Tag) -> usize {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(0) as usize
}
