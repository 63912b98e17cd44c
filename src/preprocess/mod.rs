//! Images to encoder inputs, the way each backbone's own code prepares them: SAM resizes
//! with PIL's bilinear filter and normalises by mean and std (MSA-SPEC 1.4); LiteMedSAM
//! resizes by area and scales min-max to [0, 1] (MSA-SPEC 1.6). Both zero-pad the resized
//! image bottom/right to S x S. Training, evaluation and inference all go through here.

pub mod area;
pub mod pil_bilinear;

use crate::model::{Preprocess, SamConfig};
use image::RgbImage;
pub use pil_bilinear::resize_bilinear_aa;

/// The resized size: the longer side becomes `target`, the shorter is rounded half up.
pub fn preprocess_shape(h: usize, w: usize, target: usize) -> (usize, usize) {
    let scale = target as f64 / h.max(w) as f64;
    let nh = (h as f64 * scale + 0.5) as usize;
    let nw = (w as f64 * scale + 0.5) as usize;
    (nh.max(1), nw.max(1))
}

/// SAM's `ResizeLongestSide` on an 8-bit image.
pub fn resize_longest_side(img: &RgbImage, target: usize) -> RgbImage {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (nh, nw) = preprocess_shape(h, w, target);
    resize_bilinear_aa(img, nw, nh)
}

/// An image made ready for the encoder.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// (3, S, S), zero in the padding.
    pub data: Vec<f32>,
    /// The resized, unpadded size (h, w).
    pub input_size: (usize, usize),
}

pub fn model_input(img: &RgbImage, cfg: &SamConfig) -> ModelInput {
    let s = cfg.img_size;
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (nh, nw) = preprocess_shape(h, w, s);
    let planes = match cfg.preprocess {
        Preprocess::Sam => sam_planes(img, (nh, nw), cfg),
        Preprocess::MinMax => min_max_planes(img, (nh, nw)),
    };
    let mut data = vec![0f32; 3 * s * s];
    for c in 0..3 {
        for y in 0..nh {
            let src = &planes[(c * nh + y) * nw..(c * nh + y + 1) * nw];
            data[(c * s + y) * s..(c * s + y) * s + nw].copy_from_slice(src);
        }
    }
    ModelInput {
        data,
        input_size: (nh, nw),
    }
}

/// Factors (x, y) from original-image pixels to the encoder's input frame.
pub fn coords_scale(
    cfg: &SamConfig,
    original: (usize, usize),
    input: (usize, usize),
) -> (f32, f32) {
    match cfg.preprocess {
        Preprocess::Sam => (
            input.1 as f32 / original.1 as f32,
            input.0 as f32 / original.0 as f32,
        ),
        Preprocess::MinMax => {
            let s = cfg.img_size as f32 / original.0.max(original.1) as f32;
            (s, s)
        }
    }
}

/// (3, nh, nw): PIL bilinear to 8 bits, then (v - mean) / std.
fn sam_planes(img: &RgbImage, (nh, nw): (usize, usize), cfg: &SamConfig) -> Vec<f32> {
    let resized = resize_bilinear_aa(img, nw, nh);
    let mut out = vec![0f32; 3 * nh * nw];
    for (i, p) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * nh * nw + i] = (p.0[c] as f32 - cfg.pixel_mean[c]) / cfg.pixel_std[c];
        }
    }
    out
}

/// (3, nh, nw): area (shrinking) or bilinear (enlarging) on floats, then min-max over the
/// whole resized image to [0, 1].
fn min_max_planes(img: &RgbImage, (nh, nw): (usize, usize)) -> Vec<f32> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let mut planes = vec![0f32; 3 * h * w];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            planes[c * h * w + i] = p.0[c] as f32;
        }
    }
    let ty = area::lite_taps(h, nh);
    let tx = area::lite_taps(w, nw);
    let mut out = area::resample(&planes, 3, (h, w), &ty, &tx);
    let (lo, hi) = out
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let span = (hi - lo).max(1e-8);
    out.iter_mut().for_each(|v| *v = (*v - lo) / span);
    out
}
