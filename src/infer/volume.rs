//! Segmenting a volume slice by slice from a user's prompts (no ground truth): the prompt
//! file of `msa predict-volume`, and the loop that runs the 2D model on each prompted slice.

use super::predictor::Predictor;
use super::EmbeddingCache;
use crate::io::image::overlay;
use crate::io::prompt::UserPrompt;
use crate::io::volume::{chunk_slices, plane, slice_image};
use crate::io::{Intensity, Volume};
use crate::model::Sam;
use crate::preprocess::{model_input, preprocess_shape};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use image::RgbImage;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// `{"classes": {"<label>": {"points": {"<k>": [[x, y, l], ...]}, "boxes": {"<k>": [x0, y0,
/// x1, y1]}, "box3d": [x0, y0, k0, x1, y1, k1], "interpolate_boxes": bool}}}`. Slice k is `data[:, :, k]`; x indexes
/// the first axis and y the second.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumePrompts {
    pub classes: BTreeMap<String, ClassPrompts>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassPrompts {
    #[serde(default)]
    pub points: BTreeMap<String, Vec<[f32; 3]>>,
    #[serde(default)]
    pub boxes: BTreeMap<String, [f32; 4]>,
    #[serde(default)]
    pub box3d: Option<[f32; 6]>,
    /// Slices between two boxed slices get boxes interpolated linearly between them: boxes
    /// drawn on a few key slices propagate through the structure.
    #[serde(default)]
    pub interpolate_boxes: bool,
    /// What the class is (a DICOM SEG's segment label); "class N" when absent.
    #[serde(default)]
    pub name: Option<String>,
}

impl ClassPrompts {
    /// (slice, box) for every slice strictly between two consecutive boxed slices.
    fn interpolated_boxes(&self, keyed: &BTreeMap<usize, [f32; 4]>) -> Vec<(usize, [f32; 4])> {
        if !self.interpolate_boxes {
            return vec![];
        }
        let keys: Vec<(&usize, &[f32; 4])> = keyed.iter().collect();
        let mut out = vec![];
        for (&(&ka, a), &(&kb, b)) in keys.iter().zip(keys.iter().skip(1)) {
            for k in ka + 1..kb {
                let t = (k - ka) as f32 / (kb - ka) as f32;
                let mut bx = *a;
                for (v, &end) in bx.iter_mut().zip(b) {
                    *v += t * (end - *v);
                }
                out.push((k, bx));
            }
        }
        out
    }
}

/// The prompts of one slice: (label value, prompt) in label order.
pub type SlicePrompts = Vec<(u8, UserPrompt)>;

impl VolumePrompts {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read prompts {}", path.display()))?;
        Self::parse(&text).with_context(|| path.display().to_string())
    }

    /// Prompts from their JSON text.
    pub fn parse(text: &str) -> Result<Self> {
        serde_json::from_str(text).context(
            "expected {\"classes\": {\"<label>\": {\"points\": {\"<k>\": [[x, y, l]]}, \"boxes\": {\"<k>\": [x0, y0, x1, y1]}, \"box3d\": [x0, y0, k0, x1, y1, k1]}}}",
        )
    }

    /// (label, name) of every class, in label order; labels that are not 1..=255 are
    /// refused by `per_slice`, and skipped here.
    pub fn names(&self) -> Vec<(u8, String)> {
        let mut out: Vec<(u8, String)> = self
            .classes
            .iter()
            .filter_map(|(class, p)| {
                let label = class.trim().parse::<u8>().ok().filter(|l| *l > 0)?;
                Some((
                    label,
                    p.name.clone().unwrap_or_else(|| format!("class {label}")),
                ))
            })
            .collect();
        out.sort();
        out
    }

    /// Prompts per slice for a volume of `nz` slices. A 3D box gives every slice from k0
    /// to k1 its (x0, y0, x1, y1) box, unless that slice has its own box for the class.
    pub fn per_slice(&self, nz: usize) -> Result<BTreeMap<usize, SlicePrompts>> {
        let mut out: BTreeMap<usize, BTreeMap<u8, UserPrompt>> = BTreeMap::new();
        let slice = |key: &str, class: &str| -> Result<usize> {
            let k: usize = key
                .trim()
                .parse()
                .with_context(|| format!("class {class}: slice `{key}` is not an index"))?;
            if k >= nz {
                bail!("class {class}: slice {k} is outside the volume's {nz} slices");
            }
            Ok(k)
        };
        for (class, p) in &self.classes {
            let label = class
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l > 0)
                .with_context(|| format!("class `{class}`: labels are integers 1..=255"))?;
            if let Some([x0, y0, k0, x1, y1, k1]) = p.box3d {
                let (k0, k1) = (k0.round().max(0.0) as usize, k1.round().max(0.0) as usize);
                if k0 > k1 || k1 >= nz {
                    bail!("class {class}: box3d slices {k0}..={k1} do not fit the volume's {nz} slices");
                }
                for k in k0..=k1 {
                    out.entry(k).or_default().entry(label).or_default().bbox =
                        Some([x0, y0, x1, y1]);
                }
            }
            let keyed = p
                .boxes
                .iter()
                .map(|(key, b)| Ok((slice(key, class)?, *b)))
                .collect::<Result<BTreeMap<usize, [f32; 4]>>>()?;
            for (k, b) in p.interpolated_boxes(&keyed).into_iter().chain(keyed) {
                out.entry(k).or_default().entry(label).or_default().bbox = Some(b);
            }
            for (key, pts) in &p.points {
                let k = slice(key, class)?;
                let prompt = out.entry(k).or_default().entry(label).or_default();
                for &[x, y, l] in pts {
                    if l != 0.0 && l != 1.0 {
                        bail!("class {class}, slice {k}: point label {l} must be 1 or 0");
                    }
                    prompt.points.push((x, y, l as i64));
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|(k, by_label)| (k, by_label.into_iter().collect()))
            .collect())
    }
}

/// Colours for classes 1, 2, ... (cycled).
pub const CLASS_COLOURS: [[u8; 3]; 6] = [
    [255, 40, 40],
    [40, 200, 255],
    [60, 220, 60],
    [255, 200, 0],
    [200, 80, 255],
    [255, 120, 180],
];

/// Slice k with every class of `classes` drawn in its colour.
pub fn class_overlay(
    vol: &Volume,
    k: usize,
    range: (f32, f32),
    classes: &[u8],
) -> Result<RgbImage> {
    let slice = plane(classes, vol.dims, k)?;
    let mut img = slice_image(vol, k, range)?;
    let mut present: Vec<u8> = slice.iter().copied().filter(|&l| l > 0).collect();
    present.sort_unstable();
    present.dedup();
    for l in present {
        let mask: Vec<bool> = slice.iter().map(|&v| v == l).collect();
        img = overlay(&img, &mask, class_colour(l));
    }
    Ok(img)
}

/// The colour of class `l` (1, 2, ...; cycled).
pub fn class_colour(l: u8) -> [u8; 3] {
    let i = (l as usize).saturating_sub(1) % CLASS_COLOURS.len();
    CLASS_COLOURS.get(i).copied().unwrap_or([255, 255, 255])
}

/// Labels for every voxel (x-fastest, 0 where nothing was prompted or found). Each
/// prompted slice is encoded once, alone, or within its chunk of consecutive slices when
/// the model has depth adapters; classes are decoded in label order, a later class taking
/// the voxels its mask shares with an earlier one. `done(n)` reports prompted slices done;
/// an error from it stops the work (a user's Ctrl+C).
pub fn segment_volume(
    sam: &Sam,
    vol: &Volume,
    range: (f32, f32),
    prompts: &BTreeMap<usize, SlicePrompts>,
    done: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<u8>> {
    segment_volume_cached(sam, vol, range, prompts, None, done)
}

/// How a volume's slices became 8-bit images for the model: the scaling, why it was chosen,
/// and the value range mapped to 0..255.
pub struct SliceScaling {
    pub intensity: Intensity,
    pub why: String,
    pub range: (f32, f32),
}

impl SliceScaling {
    /// `window` (a CT window `LO,HI`, its name, or `mri`) when given, else chosen from the
    /// volume's values.
    pub fn of(vol: &Volume, window: Option<&str>) -> Result<Self> {
        let (intensity, why) = match window {
            Some(w) => (Intensity::parse(w)?, "--window".to_string()),
            None => Intensity::choose(None, vol),
        };
        let range = intensity.range(vol);
        Ok(Self {
            intensity,
            why,
            range,
        })
    }
}

/// `segment_volume`, with each chunk's embeddings kept in `cache` under `<key>:<start>`
/// (for several prompt sets on one volume and one model).
pub fn segment_volume_cached(
    sam: &Sam,
    vol: &Volume,
    range: (f32, f32),
    prompts: &BTreeMap<usize, SlicePrompts>,
    mut cache: Option<(&mut EmbeddingCache, &str)>,
    mut done: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<u8>> {
    let [nx, ny, nz] = vol.dims;
    if let Some(&k) = prompts.keys().find(|&&k| k >= nz) {
        bail!("prompts for slice {k}, but the volume has {nz} slices");
    }
    let mut labels = vec![0u8; vol.data.len()];
    let mut predictor = Predictor::new(sam);
    let mut n = 0;
    let d = sam.depth_chunk().unwrap_or(1);
    for chunk in chunk_plan(nz, d) {
        let wanted: Vec<usize> = chunk
            .owned
            .clone()
            .filter(|k| prompts.contains_key(k))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let embeddings = match cache.as_mut() {
            Some((cache, key)) => SliceEmbeddings {
                features: cache.get_or_insert(&format!("{key}:{}", chunk.start), || {
                    Ok(encode_chunk(sam, vol, range, &chunk.slices)?.features)
                })?,
                // Every slice of a volume has the volume's in-plane size.
                input_size: preprocess_shape(ny, nx, sam.config.img_size),
            },
            None => encode_chunk(sam, vol, range, &chunk.slices)?,
        };
        for k in wanted {
            let i = k - chunk.start;
            predictor.set_embedding(
                embeddings.features.narrow(0, i, 1)?,
                embeddings.input_size,
                (ny, nx),
            )?;
            let out = labels
                .get_mut(k * nx * ny..(k + 1) * nx * ny)
                .with_context(|| format!("slice {k} is outside the volume"))?;
            let slice_prompts = prompts.get(&k).map(Vec::as_slice).unwrap_or_default();
            for (label, prompt) in slice_prompts {
                prompt
                    .check_inside(nx, ny)
                    .with_context(|| format!("slice {k}, class {label}"))?;
                let mask = predictor.predict(prompt, false)?.binary_mask(0)?;
                for (o, m) in out.iter_mut().zip(mask) {
                    if m {
                        *o = *label;
                    }
                }
            }
            n += 1;
            done(n)?;
        }
    }
    Ok(labels)
}

/// d consecutive slices that are encoded together.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub start: usize,
    /// The d slice indices (a volume shorter than d repeats its last slice).
    pub slices: Vec<usize>,
    /// The slices this chunk is used for: those no earlier chunk covers.
    pub owned: std::ops::Range<usize>,
}

/// Chunks of d consecutive slices covering 0..nz. The last chunk ends at the last slice,
/// overlapping the one before it.
pub fn chunk_plan(nz: usize, d: usize) -> Vec<Chunk> {
    let d = d.max(1);
    let mut plan: Vec<Chunk> = vec![];
    let mut covered = 0;
    while covered < nz {
        let start = covered.min(nz.saturating_sub(d));
        let end = (start + d).min(nz);
        plan.push(Chunk {
            start,
            slices: chunk_slices(start, d, nz),
            owned: covered..end,
        });
        covered = end;
    }
    plan
}

/// Embeddings of some slices of a volume, with the input size they share.
pub struct SliceEmbeddings {
    pub features: Tensor,
    pub input_size: (usize, usize),
}

/// Encodes `slices` of `vol` together: as one depth chunk when the model has depth
/// adapters (slices.len() must then be its chunk), else each slice alone.
pub fn encode_chunk(
    sam: &Sam,
    vol: &Volume,
    range: (f32, f32),
    slices: &[usize],
) -> Result<SliceEmbeddings> {
    let s = sam.config.img_size;
    let mut data = Vec::with_capacity(slices.len() * 3 * s * s);
    let mut input_size = (0, 0);
    for &k in slices {
        let input = model_input(&slice_image(vol, k, range)?, &sam.config);
        input_size = input.input_size;
        data.extend(input.data);
    }
    let x = Tensor::from_vec(data, (slices.len(), 3, s, s), sam.device())?;
    let features = match sam.depth_chunk() {
        Some(d) => sam.encode_chunks(&x, d)?,
        None => {
            let each = (0..slices.len())
                .map(|i| sam.encode(&x.narrow(0, i, 1)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&each, 0)?
        }
    };
    Ok(SliceEmbeddings {
        features,
        input_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_plans_cover_every_slice_once() {
        let plan = chunk_plan(10, 4);
        let starts: Vec<usize> = plan.iter().map(|c| c.start).collect();
        assert_eq!(starts, [0, 4, 6]);
        assert_eq!(plan[2].slices, [6, 7, 8, 9]);
        assert_eq!(plan[2].owned, 8..10);
        let owned: Vec<usize> = plan.iter().flat_map(|c| c.owned.clone()).collect();
        assert_eq!(owned, (0..10).collect::<Vec<_>>());
        let short = chunk_plan(3, 4);
        assert_eq!(short.len(), 1);
        assert_eq!(short[0].slices, [0, 1, 2, 2]);
        assert_eq!(short[0].owned, 0..3);
        assert_eq!(chunk_plan(8, 1).len(), 8);
    }

    #[test]
    fn a_3d_box_reaches_its_slices_and_slice_boxes_win() {
        let json = r#"{"classes": {
            "2": {"box3d": [1, 2, 3, 11, 12, 5], "boxes": {"4": [0, 0, 9, 9]}},
            "1": {"points": {"4": [[5, 6, 1]]}}
        }}"#;
        let p: VolumePrompts = serde_json::from_str(json).unwrap();
        let s = p.per_slice(8).unwrap();
        assert_eq!(s.keys().copied().collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(
            s[&3],
            vec![(
                2,
                UserPrompt {
                    points: vec![],
                    bbox: Some([1.0, 2.0, 11.0, 12.0])
                }
            )]
        );
        let four = &s[&4];
        assert_eq!(
            four[0],
            (
                1,
                UserPrompt {
                    points: vec![(5.0, 6.0, 1)],
                    bbox: None
                }
            )
        );
        assert_eq!(four[1].1.bbox, Some([0.0, 0.0, 9.0, 9.0]));
        let err = p.per_slice(5).unwrap_err().to_string();
        assert!(err.contains("3..=5") && err.contains("5 slices"), "{err}");
    }

    #[test]
    fn boxes_on_key_slices_interpolate_between_them() {
        let json = r#"{"classes": {"1": {"interpolate_boxes": true,
            "boxes": {"2": [0, 0, 10, 10], "6": [4, 8, 14, 30], "7": [1, 1, 2, 2]}}}}"#;
        let p: VolumePrompts = serde_json::from_str(json).unwrap();
        let s = p.per_slice(10).unwrap();
        assert_eq!(s.keys().copied().collect::<Vec<_>>(), [2, 3, 4, 5, 6, 7]);
        assert_eq!(s[&4][0].1.bbox, Some([2.0, 4.0, 12.0, 20.0]));
        assert_eq!(s[&6][0].1.bbox, Some([4.0, 8.0, 14.0, 30.0]));
        let plain = json.replace("\"interpolate_boxes\": true,", "");
        let p: VolumePrompts = serde_json::from_str(&plain).unwrap();
        assert_eq!(p.per_slice(10).unwrap().len(), 3);
    }
}
