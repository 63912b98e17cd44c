//! Reading user images into 8-bit RGB, SAM's ResizeLongestSide, and writing masks.

use anyhow::{Context, Result};
use image::{DynamicImage, GrayImage, RgbImage};
use std::path::Path;

/// Reads PNG, JPEG, TIFF or BMP, 8 or 16 bit (or float), gray or colour, as 8-bit RGB.
/// Images deeper than 8 bits are scaled from their own min..max to 0..255, since medical
/// 16-bit files rarely use the full range.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::open(path).with_context(|| format!("cannot read image {}", path.display()))?;
    Ok(to_rgb8(img))
}

pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => img.to_rgb8(),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgba8(_) => img.to_rgb8(),
        deep => rescale_to_u8(deep.to_rgb32f()),
    }
}

fn rescale_to_u8(img: image::Rgb32FImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let values = img.as_raw();
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let lo = if lo.is_finite() { lo } else { 0.0 };
    let data = values
        .iter()
        .map(|&v| {
            let v = if v.is_finite() { v } else { lo };
            ((v - lo) / span * 255.0).round().clamp(0.0, 255.0) as u8
        })
        .collect();
    RgbImage::from_raw(w, h, data).expect("buffer has w*h*3 values by construction")
}

/// SAM's target size: the longer side becomes `target`, the shorter is rounded half up.
pub fn preprocess_shape(h: usize, w: usize, target: usize) -> (usize, usize) {
    let scale = target as f64 / h.max(w) as f64;
    let nh = (h as f64 * scale + 0.5) as usize;
    let nw = (w as f64 * scale + 0.5) as usize;
    (nh.max(1), nw.max(1))
}

/// Resizes so that the longer side is `target`, with PIL's antialiased bilinear filter.
pub fn resize_longest_side(img: &RgbImage, target: usize) -> RgbImage {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (nh, nw) = preprocess_shape(h, w, target);
    resize_bilinear_aa(img, nw, nh)
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index and fixed-point weights (PIL's `precompute_coeffs`).
fn coefficients(n_in: usize, n_out: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = n_in as f64 / n_out as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    (0..n_out)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filterscale).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|w| {
                    let k = if total != 0.0 { w / total } else { 0.0 };
                    let v = k * (1u32 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (v - 0.5) as i32
                    } else {
                        (v + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Antialiased bilinear resize, horizontal pass then vertical, 8-bit between passes.
pub fn resize_bilinear_aa(img: &RgbImage, nw: usize, nh: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let round = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if nw != w {
        let cx = coefficients(w, nw);
        let mut out = vec![0u8; h * nw * 3];
        for y in 0..h {
            for (x, (start, ks)) in cx.iter().enumerate() {
                for c in 0..3 {
                    let acc: i64 = ks
                        .iter()
                        .enumerate()
                        .map(|(i, &k)| src[(y * w + start + i) * 3 + c] as i64 * k as i64)
                        .sum();
                    out[(y * nw + x) * 3 + c] = clip8(acc + round);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    let vertical = if nh != h {
        let cy = coefficients(h, nh);
        let mut out = vec![0u8; nh * nw * 3];
        for (y, (start, ks)) in cy.iter().enumerate() {
            for x in 0..nw {
                for c in 0..3 {
                    let acc: i64 = ks
                        .iter()
                        .enumerate()
                        .map(|(i, &k)| horizontal[((start + i) * nw + x) * 3 + c] as i64 * k as i64)
                        .sum();
                    out[(y * nw + x) * 3 + c] = clip8(acc + round);
                }
            }
        }
        out
    } else {
        horizontal
    };
    RgbImage::from_raw(nw as u32, nh as u32, vertical).expect("nw*nh*3 values by construction")
}

/// A binary mask as a 0/255 PNG.
pub fn save_mask(mask: &[bool], w: usize, h: usize, path: &Path) -> Result<()> {
    let data = mask.iter().map(|&m| if m { 255u8 } else { 0 }).collect();
    let img = GrayImage::from_raw(w as u32, h as u32, data).context("mask size mismatch")?;
    img.save(path)
        .with_context(|| format!("cannot write mask {}", path.display()))
}

/// The image with the mask tinted in and its outline drawn.
pub fn overlay(img: &RgbImage, mask: &[bool], color: [u8; 3]) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = img.clone();
    let inside = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < w
            && (y as usize) < h
            && mask[y as usize * w + x as usize]
    };
    for y in 0..h {
        for x in 0..w {
            if !mask[y * w + x] {
                continue;
            }
            let (xi, yi) = (x as isize, y as isize);
            let edge = !(inside(xi - 1, yi)
                && inside(xi + 1, yi)
                && inside(xi, yi - 1)
                && inside(xi, yi + 1));
            let p = out.get_pixel_mut(x as u32, y as u32);
            for (v, &c) in p.0.iter_mut().zip(&color) {
                *v = if edge {
                    c
                } else {
                    ((*v as u16 + c as u16) / 2) as u8
                };
            }
        }
    }
    out
}
