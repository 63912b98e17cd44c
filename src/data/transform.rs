//! A sample made ready for the model: light augmentation, SAM's resize and padding, and a
//! prompt drawn from the target.

use super::prompts::{from_mask, PromptKind};
use super::sample::Sample;
use super::synthetic::SplitMix;
use crate::io::prompt::UserPrompt;
use crate::model::SamConfig;
use crate::preprocess::model_input;
use image::RgbImage;

/// Model-ready arrays for one sample, in the S x S input frame.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub id: String,
    /// (3, S, S): the backbone's preprocessing, zero-padded bottom/right.
    pub input: Vec<f32>,
    /// (K, S, S) targets in {0, 1}, zero in the padding.
    pub masks: Vec<f32>,
    /// The prompt in input-frame pixels.
    pub prompt: UserPrompt,
    /// The resized, unpadded size (h, w).
    pub input_size: (usize, usize),
    /// Corrective clicks simulated before the pass that trains (training only; 0 here).
    pub corrections: usize,
}

/// Flips and an intensity change, applied to the image and its masks alike.
pub fn augment(sample: &Sample, rng: &mut SplitMix) -> Sample {
    let (h, w) = sample.size();
    let flip_x = rng.uniform() < 0.5;
    let flip_y = rng.uniform() < 0.5;
    let gain = 0.9 + 0.2 * rng.uniform() as f32;
    let bias = (rng.uniform() as f32 - 0.5) * 20.0;
    let src = |x: usize, y: usize| {
        let sx = if flip_x { w - 1 - x } else { x };
        let sy = if flip_y { h - 1 - y } else { y };
        (sx, sy)
    };
    let image = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (sx, sy) = src(x as usize, y as usize);
        let p = sample.image.get_pixel(sx as u32, sy as u32).0;
        image::Rgb(p.map(|v| (v as f32 * gain + bias).round().clamp(0.0, 255.0) as u8))
    });
    let masks = sample
        .masks
        .iter()
        .map(|m| {
            (0..h * w)
                .map(|i| {
                    let (sx, sy) = src(i % w, i / w);
                    m.get(sy * w + sx).copied().unwrap_or(false)
                })
                .collect()
        })
        .collect();
    Sample {
        id: sample.id.clone(),
        image,
        masks,
    }
}

/// Nearest-neighbour resize of a mask (pixel centres, as PyTorch's `nearest`).
pub fn resize_mask_nearest(
    mask: &[bool],
    (h, w): (usize, usize),
    (nh, nw): (usize, usize),
) -> Vec<bool> {
    (0..nh * nw)
        .map(|i| {
            let (y, x) = (i / nw, i % nw);
            let sy = ((y as f64 * h as f64 / nh as f64).floor() as usize).min(h - 1);
            let sx = ((x as f64 * w as f64 / nw as f64).floor() as usize).min(w - 1);
            mask.get(sy * w + sx).copied().unwrap_or(false)
        })
        .collect()
}

/// A mask (h x w) resized as its image was, to the unpadded `input_size` (nh, nw), and
/// placed top-left in an S x S frame of {0, 1}.
pub fn mask_in_frame(
    mask: &[bool],
    (h, w): (usize, usize),
    (nh, nw): (usize, usize),
    s: usize,
) -> (Vec<bool>, Vec<f32>) {
    let small = resize_mask_nearest(mask, (h, w), (nh, nw));
    let mut frame = vec![0f32; s * s];
    for (i, &v) in small.iter().enumerate() {
        if let Some(f) = frame.get_mut((i / nw) * s + i % nw) {
            *f = v as u8 as f32;
        }
    }
    (small, frame)
}

/// The backbone's preprocessing (longest side to S, normalise, pad); masks likewise; prompt
/// from the union of the class masks. None when the resized target is empty.
pub fn prepare(
    sample: &Sample,
    cfg: &SamConfig,
    kind: PromptKind,
    rng: &mut SplitMix,
) -> Option<Prepared> {
    let s = cfg.img_size;
    let prepared = model_input(&sample.image, cfg);
    let (nh, nw) = prepared.input_size;
    let mut masks = Vec::with_capacity(sample.masks.len() * s * s);
    let mut union = vec![false; nh * nw];
    for m in &sample.masks {
        let (small, frame) = mask_in_frame(m, sample.size(), (nh, nw), s);
        masks.extend(frame);
        for (u, v) in union.iter_mut().zip(small) {
            *u |= v;
        }
    }
    let prompt = from_mask(&union, nw, nh, kind, rng)?;
    Some(Prepared {
        id: sample.id.clone(),
        input: prepared.data,
        masks,
        prompt,
        input_size: (nh, nw),
        corrections: 0,
    })
}
