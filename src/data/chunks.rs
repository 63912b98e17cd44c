//! Training chunks from volumes (MSA-SPEC 2.2 and 3.1): D consecutive slices of one case,
//! drawn with a bias toward slices that hold a target, and one prompt per class on every
//! slice of the chunk that holds that class. Only one volume is in memory per worker.

use super::decathlon::{load_case, LabelMap, VolumeCase};
use super::prompts::{from_mask, PromptKind};
use super::sample::Sample;
use super::synthetic::SplitMix;
use super::transform::{augment, mask_in_frame};
use crate::io::prompt::UserPrompt;
use crate::io::volume::{chunk_slices, plane, slice_image};
use crate::io::{Intensity, Volume};
use crate::model::SamConfig;
use crate::preprocess::model_input;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// A training case, with what a scan of its labels found.
#[derive(Debug, Clone)]
pub struct VolumeItem {
    pub case: VolumeCase,
    pub slices: usize,
    /// Slices that hold at least one class.
    pub labelled: Vec<usize>,
}

/// Reads every case once (in parallel): the image and label must agree in shape and the
/// label must hold a class. Returns the good cases and each bad one with its reason.
pub fn scan(cases: &[VolumeCase], labels: &LabelMap) -> (Vec<VolumeItem>, Vec<(String, String)>) {
    let results: Vec<(VolumeCase, Result<VolumeItem>)> = cases
        .par_iter()
        .map(|c| (c.clone(), scan_case(c, labels)))
        .collect();
    let mut good = vec![];
    let mut bad = vec![];
    for (case, r) in results {
        match r {
            Ok(item) => good.push(item),
            Err(e) => bad.push((case.id, format!("{e:#}"))),
        }
    }
    (good, bad)
}

fn scan_case(case: &VolumeCase, labels: &LabelMap) -> Result<VolumeItem> {
    let (_, label) = load_case(case)?;
    let classes = labels.apply(&label.volume.data);
    let n = label.volume.slice_len();
    let [_, _, nz] = label.volume.dims;
    let labelled: Vec<usize> = (0..nz)
        .filter(|&k| {
            classes
                .get(k * n..(k + 1) * n)
                .is_some_and(|p| p.iter().any(|&c| c > 0))
        })
        .collect();
    if labelled.is_empty() {
        bail!("{}: no voxel holds a selected label", case.label.display());
    }
    Ok(VolumeItem {
        case: case.clone(),
        slices: nz,
        labelled,
    })
}

/// How chunks are drawn and made ready for the model.
#[derive(Debug, Clone)]
pub struct ChunkSpec {
    pub cfg: SamConfig,
    /// D, the slices per chunk.
    pub chunk: usize,
    pub kind: PromptKind,
    pub seed: u64,
    pub labels: LabelMap,
    /// `None`: chosen per volume from `modality` or its values.
    pub intensity: Option<Intensity>,
    pub modality: Option<String>,
    pub augment: bool,
    /// Probability that a chunk is placed around a labelled slice (else anywhere).
    pub target_bias: f64,
    /// Chunks per case and epoch; 0: enough to cover its labelled slices once on average.
    pub chunks_per_case: usize,
}

/// One slice's target for one class, in the S x S input frame.
#[derive(Debug, Clone)]
pub struct SliceTarget {
    /// Position in the chunk (0..D).
    pub slice: usize,
    pub class: u8,
    /// (S, S) in {0, 1}, zero in the padding.
    pub mask: Vec<f32>,
    pub prompt: UserPrompt,
}

/// D slices ready for the encoder, and their targets.
#[derive(Debug, Clone)]
pub struct PreparedChunk {
    pub id: String,
    pub start: usize,
    /// (D, 3, S, S).
    pub input: Vec<f32>,
    pub targets: Vec<SliceTarget>,
}

/// Chunks an epoch draws from a case: `fixed`, or when 0 enough to cover its labelled
/// slices once on average.
pub fn chunks_per_case(item: &VolumeItem, d: usize, fixed: usize) -> usize {
    if fixed > 0 {
        return fixed;
    }
    item.labelled.len().div_ceil(d.max(1)).max(1)
}

/// A chunk start: with probability `bias` the chunk holds a labelled slice (drawn
/// uniformly) at a random position, else it starts anywhere.
pub fn draw_start(item: &VolumeItem, d: usize, bias: f64, rng: &mut SplitMix) -> usize {
    let last_start = item.slices.saturating_sub(d);
    let labelled = match rng.uniform() < bias {
        true => item.labelled.get(rng.below(item.labelled.len())).copied(),
        false => None,
    };
    match labelled {
        Some(k) => k.saturating_sub(rng.below(d.max(1))).min(last_start),
        None => rng.below(last_start + 1),
    }
}

/// The slices from `start` prepared as the backbone expects, with one prompt per class on
/// every slice of the chunk that holds it. Flips and intensity changes, when on, are the
/// same for all slices of a chunk.
pub fn prepare_chunk(
    id: &str,
    image: &Volume,
    classes: &[u8],
    start: usize,
    spec: &ChunkSpec,
    rng: &mut SplitMix,
) -> Result<PreparedChunk> {
    let [_, _, nz] = image.dims;
    let s = spec.cfg.img_size;
    let range = match spec.intensity {
        Some(i) => i.range(image),
        None => Intensity::choose(spec.modality.as_deref(), image)
            .0
            .range(image),
    };
    let n_classes = spec.labels.classes() as u8;
    // One kind per chunk: its slices' prompts go through the decoder together.
    let kind = spec.kind.draw(rng);
    let aug_seed = rng.next_u64();
    let slices = chunk_slices(start, spec.chunk, nz);
    let seeds: Vec<u64> = slices.iter().map(|_| rng.next_u64()).collect();
    let per_slice: Vec<(Vec<f32>, Vec<SliceTarget>)> = slices
        .par_iter()
        .enumerate()
        .map(|(i, &k)| {
            let labels = plane(classes, image.dims, k)?;
            let mut sample = Sample {
                id: format!("{id}:{k}"),
                image: slice_image(image, k, range)?,
                masks: (1..=n_classes)
                    .map(|c| labels.iter().map(|&v| v == c).collect())
                    .collect(),
            };
            if spec.augment {
                sample = augment(&sample, &mut SplitMix(aug_seed));
            }
            // A slice repeated to fill a short volume is trained on once.
            let repeated = i.checked_sub(1).and_then(|j| slices.get(j)) == Some(&k);
            let mut prompt_rng = SplitMix(seeds.get(i).copied().unwrap_or_default());
            let input = model_input(&sample.image, &spec.cfg);
            let targets = if repeated {
                vec![]
            } else {
                slice_targets(&sample, input.input_size, s, i, kind, &mut prompt_rng)
            };
            Ok((input.data, targets))
        })
        .collect::<Result<_>>()?;
    let mut input = Vec::with_capacity(slices.len() * 3 * s * s);
    let mut targets = vec![];
    for (data, t) in per_slice {
        input.extend(data);
        targets.extend(t);
    }
    Ok(PreparedChunk {
        id: id.to_string(),
        start,
        input,
        targets,
    })
}

fn slice_targets(
    sample: &Sample,
    input_size: (usize, usize),
    s: usize,
    slice: usize,
    kind: PromptKind,
    rng: &mut SplitMix,
) -> Vec<SliceTarget> {
    let (nh, nw) = input_size;
    sample
        .masks
        .iter()
        .enumerate()
        .filter_map(|(c, m)| {
            let (small, mask) = mask_in_frame(m, sample.size(), input_size, s);
            let prompt = from_mask(&small, nw, nh, kind, rng)?;
            Some(SliceTarget {
                slice,
                class: c as u8 + 1,
                mask,
                prompt,
            })
        })
        .collect()
}

/// Chunks in an epoch over `items`.
pub fn epoch_len(items: &[VolumeItem], d: usize, fixed: usize) -> usize {
    items.iter().map(|it| chunks_per_case(it, d, fixed)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::blob_volume;

    fn spec(kind: PromptKind, augment: bool) -> ChunkSpec {
        let mut cfg = SamConfig::preset("vit_b").unwrap_or_else(|e| panic!("{e}"));
        cfg.img_size = 64;
        ChunkSpec {
            cfg,
            chunk: 4,
            kind,
            seed: 1,
            labels: LabelMap::parse("1,2").unwrap_or_else(|e| panic!("{e}")),
            intensity: None,
            modality: Some("MRI".into()),
            augment,
            target_bias: 1.0,
            chunks_per_case: 0,
        }
    }

    #[test]
    fn every_target_has_its_prompt_inside_its_mask() {
        let dims = [40, 32, 10];
        let (data, classes) = blob_volume(dims, 5);
        let vol = Volume {
            dims,
            data,
            spacing: [1.0; 3],
            affine: [[0.0; 4]; 4],
        };
        for augment in [false, true] {
            let s = spec(PromptKind::Click, augment);
            let chunk = prepare_chunk("v", &vol, &classes, 3, &s, &mut SplitMix(7)).unwrap();
            assert_eq!(chunk.input.len(), 4 * 3 * 64 * 64);
            assert!(chunk.targets.iter().any(|t| t.class == 1));
            assert!(chunk.targets.iter().any(|t| t.class == 2));
            for t in &chunk.targets {
                let (x, y, l) = t.prompt.points[0];
                assert_eq!(l, 1);
                assert_eq!(t.mask[y as usize * 64 + x as usize], 1.0, "{t:?}");
                // The mask is that class's voxels of that slice, resized (64 / 40).
                let k = 3 + t.slice;
                let plane = &classes[k * 40 * 32..(k + 1) * 40 * 32];
                let voxels = plane.iter().filter(|&&c| c == t.class).count() as f32;
                let pixels = t.mask.iter().sum::<f32>();
                let ratio = pixels / (voxels * 1.6 * 1.6);
                assert!(
                    (0.8..1.25).contains(&ratio),
                    "class {} ratio {ratio}",
                    t.class
                );
            }
        }
    }
}
