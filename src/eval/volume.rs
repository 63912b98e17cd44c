//! Evaluation on volumes (MSA-SPEC 3.3): one prompt per class on every slice that holds it,
//! drawn from the label volume with a seed (3.1); Dice, IoU and HD95 in mm from the voxel
//! spacing, per case and per organ; a montage of slices with their overlays.

use super::evaluate::CaseResult;
use super::metrics::{dice, hd95, iou};
use crate::data::decathlon::{load_case, LabelMap, VolumeCase};
use crate::data::prompts::{from_mask, PromptKind};
use crate::data::synthetic::SplitMix;
use crate::infer::volume::{class_overlay, segment_volume_cached, SlicePrompts};
use crate::infer::EmbeddingCache;
use crate::io::{Intensity, Volume};
use crate::model::Sam;
use anyhow::{Context, Result};
use image::RgbImage;
use std::collections::BTreeMap;
use std::path::Path;

/// How a volume evaluation draws prompts and scales intensities.
pub struct VolumeEvalSpec<'a> {
    pub labels: &'a LabelMap,
    /// Class index (1..) -> name, for the reports.
    pub class_names: Vec<String>,
    pub kind: PromptKind,
    pub seed: u64,
    /// `None`: chosen per volume from `modality` or its values.
    pub intensity: Option<Intensity>,
    pub modality: Option<String>,
}

/// Prompts from ground-truth classes (x-fastest, one u8 class per voxel): for every slice
/// and class present, one prompt of `kind`, seeded by (seed, case, slice, class).
pub fn prompts_from_labels(
    classes: &[u8],
    dims: [usize; 3],
    n_classes: usize,
    kind: PromptKind,
    seed: u64,
    case: &str,
) -> BTreeMap<usize, SlicePrompts> {
    let [nx, ny, nz] = dims;
    let case_hash = case.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut out = BTreeMap::new();
    for k in 0..nz {
        let slice = &classes[k * nx * ny..(k + 1) * nx * ny];
        let mut prompts = vec![];
        for c in 1..=n_classes as u8 {
            let mask: Vec<bool> = slice.iter().map(|&v| v == c).collect();
            let mut rng = SplitMix(seed ^ case_hash ^ ((k as u64) << 20) ^ ((c as u64) << 8));
            if let Some(p) = from_mask(&mask, nx, ny, kind, &mut rng) {
                prompts.push((c, p));
            }
        }
        if !prompts.is_empty() {
            out.insert(k, prompts);
        }
    }
    out
}

/// The result of one volume: scores per class, and the predicted classes per voxel.
pub struct VolumeOutcome {
    pub results: Vec<CaseResult>,
    pub predicted: Vec<u8>,
    pub truth: Vec<u8>,
    pub volume: Volume,
    pub range: (f32, f32),
}

/// Segments one case from prompts drawn from its labels and scores every class. With a
/// cache, the case's slice embeddings are kept for later prompt kinds on the same model.
pub fn evaluate_case(
    sam: &Sam,
    case: &VolumeCase,
    spec: &VolumeEvalSpec,
    cache: Option<&mut EmbeddingCache>,
) -> Result<VolumeOutcome> {
    let (img, lab) = load_case(case)?;
    let truth = spec.labels.apply(&lab.volume.data);
    let intensity = spec
        .intensity
        .unwrap_or_else(|| Intensity::choose(spec.modality.as_deref(), &img.volume).0);
    let range = intensity.range(&img.volume);
    let n = spec.labels.classes();
    let prompts = prompts_from_labels(&truth, img.volume.dims, n, spec.kind, spec.seed, &case.id);
    let cache = cache.map(|c| (c, case.id.as_str()));
    let predicted = segment_volume_cached(sam, &img.volume, range, &prompts, cache, |_| Ok(()))
        .with_context(|| format!("case {}", case.id))?;
    let prompt = format!("{:?} per slice", spec.kind).to_lowercase();
    let results = score_classes(
        &case.id,
        &predicted,
        &truth,
        &img.volume,
        &spec.class_names,
        &prompt,
    );
    Ok(VolumeOutcome {
        results,
        predicted,
        truth,
        volume: img.volume,
        range,
    })
}

/// Dice, IoU and HD95 (mm, from `volume`'s spacing) of each class 1..=`class_names.len()`
/// in `predicted` against `truth` (one class per voxel, x-fastest, `volume`'s dims).
pub fn score_classes(
    case: &str,
    predicted: &[u8],
    truth: &[u8],
    volume: &Volume,
    class_names: &[String],
    prompt: &str,
) -> Vec<CaseResult> {
    let [nx, ny, nz] = volume.dims;
    let [sx, sy, sz] = volume.spacing;
    let (dims, spacing) = ([nz, ny, nx], [sz as f64, sy as f64, sx as f64]);
    (1..=class_names.len() as u8)
        .map(|c| {
            let p: Vec<bool> = predicted.iter().map(|&v| v == c).collect();
            let t: Vec<bool> = truth.iter().map(|&v| v == c).collect();
            CaseResult {
                case: case.to_string(),
                class: class_names[c as usize - 1].clone(),
                dice: dice(&p, &t),
                iou: iou(&p, &t),
                hd95: hd95(&p, &t, &dims, &spacing),
                dice_thresholds: f64::NAN,
                prompt: prompt.to_string(),
            }
        })
        .collect()
}

/// A montage of up to `rows` slices spread over the labelled range: ground truth on the
/// left, prediction on the right.
pub fn write_montage(path: &Path, out: &VolumeOutcome, rows: usize) -> Result<()> {
    let vol = &out.volume;
    let n = vol.slice_len();
    let labelled: Vec<usize> = (0..vol.dims[2])
        .filter(|&k| out.truth[k * n..(k + 1) * n].iter().any(|&v| v > 0))
        .collect();
    if labelled.is_empty() {
        return Ok(());
    }
    let picks: Vec<usize> = (0..rows.min(labelled.len()))
        .map(|i| labelled[i * labelled.len() / rows.min(labelled.len())])
        .collect();
    let (w, h) = (vol.dims[0] as u32, vol.dims[1] as u32);
    let mut canvas = RgbImage::new(2 * w + 2, picks.len() as u32 * (h + 2));
    for (row, &k) in picks.iter().enumerate() {
        let y = row as u32 * (h + 2);
        image::imageops::replace(
            &mut canvas,
            &class_overlay(vol, k, out.range, &out.truth)?,
            0,
            y as i64,
        );
        let pred = class_overlay(vol, k, out.range, &out.predicted)?;
        image::imageops::replace(&mut canvas, &pred, (w + 2) as i64, y as i64);
    }
    canvas
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
