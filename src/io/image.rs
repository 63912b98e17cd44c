//! Reading user images into 8-bit RGB, and writing masks and overlays.

use anyhow::{Context, Result};
use image::{DynamicImage, GrayImage, RgbImage};
use std::path::Path;

/// Reads PNG, JPEG, TIFF or BMP, 8 or 16 bit (or float), gray or colour, as 8-bit RGB.
/// Images deeper than 8 bits are scaled from their own min..max to 0..255, since medical
/// 16-bit files rarely use the full range.
/// Sizes are checked against `DecodeLimits::from_env()` before pixels are decoded.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_rgb(&bytes, &super::DecodeLimits::from_env())
        .with_context(|| format!("image {}", path.display()))
}

/// Decodes an image held in memory (PNG, JPEG, TIFF or BMP, told by its bytes) as
/// `load_rgb` does, refusing sizes beyond `limits` before any pixel buffer is allocated.
pub fn decode_rgb(bytes: &[u8], limits: &super::DecodeLimits) -> Result<RgbImage> {
    Ok(to_rgb8(decode(bytes, limits)?))
}

/// Reads a mask image (any format `load_rgb` reads) as 8-bit gray, with the same limits.
pub fn load_gray(path: &Path) -> Result<GrayImage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    let img = decode(&bytes, &super::DecodeLimits::from_env())
        .with_context(|| format!("image {}", path.display()))?;
    Ok(img.to_luma8())
}

/// The decoded image, its size checked against `limits` first. A decoder that panics on a
/// malformed file (zune-jpeg asserts in its upsampler; see RELIABILITY.md) gives an error.
fn decode(bytes: &[u8], limits: &super::DecodeLimits) -> Result<DynamicImage> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot read the image bytes")?;
    let Some(format) = reader.format() else {
        anyhow::bail!("not a PNG, JPEG, TIFF or BMP image (unknown leading bytes)");
    };
    check_complete(bytes, format)?;
    let (w, h) = reader.into_dimensions().map_err(ends_early)?;
    limits.check_image(w, h)?;
    reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    reader.limits(limits.image_limits());
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()));
    match decoded {
        Ok(img) => img.map_err(ends_early),
        Err(_) => anyhow::bail!("cannot decode the image: the decoder failed on malformed data"),
    }
}

/// Refuses a JPEG or PNG whose end is missing. Their decoders fill a cut JPEG with grey
/// and take a PNG without its end chunk; the other formats' decoders fail on a cut file.
fn check_complete(bytes: &[u8], format: image::ImageFormat) -> Result<()> {
    match format {
        image::ImageFormat::Jpeg => jpeg_complete(bytes),
        image::ImageFormat::Png => {
            // The end chunk: zero length, its type, its CRC.
            const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
            if find_last(bytes, &IEND).is_none() {
                anyhow::bail!(
                    "truncated PNG: {} bytes and no complete IEND chunk",
                    bytes.len()
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Refuses a JPEG stream without its end-of-image marker after the last scan (also for
/// the compressed frames of DICOM files).
pub fn jpeg_complete(bytes: &[u8]) -> Result<()> {
    // Entropy-coded data stuffs every 0xFF with 0x00, so FF D9 after the last
    // start-of-scan is the end-of-image marker itself.
    let scan = find_last(bytes, &[0xFF, 0xDA]);
    let end = find_last(bytes, &[0xFF, 0xD9]);
    match (scan, end) {
        (Some(s), Some(e)) if e > s => Ok(()),
        (None, _) => anyhow::bail!("truncated JPEG: no scan data (no SOS marker)"),
        _ => anyhow::bail!(
            "truncated JPEG: {} bytes and no end-of-image marker after the last scan",
            bytes.len()
        ),
    }
}

fn find_last(bytes: &[u8], pattern: &[u8]) -> Option<usize> {
    bytes.windows(pattern.len()).rposition(|w| w == pattern)
}

/// A decoder's error, said plainly when it is the end of the data coming early.
fn ends_early(e: image::ImageError) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("fill whole buffer") || text.contains("unexpected end of file") {
        anyhow::anyhow!("truncated image: the file ends before its pixel data does ({text})")
    } else {
        anyhow::Error::new(e).context("cannot decode the image")
    }
}

pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => img.to_rgb8(),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgba8(_) => img.to_rgb8(),
        deep => rescale_to_u8(deep.to_rgb32f()),
    }
}

#[expect(
    clippy::expect_used,
    reason = "`data` maps each of the w*h*3 values of a w x h RGB image to one byte"
)]
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

/// A binary mask as a 0/255 PNG.
pub fn save_mask(mask: &[bool], w: usize, h: usize, path: &Path) -> Result<()> {
    let data = mask.iter().map(|&m| if m { 255u8 } else { 0 }).collect();
    let img = GrayImage::from_raw(w as u32, h as u32, data).context("mask size mismatch")?;
    img.save(path)
        .with_context(|| format!("cannot write mask {}", path.display()))
}

/// The image with the mask tinted in and its outline drawn. Pixels beyond the end of a
/// short mask count as outside.
pub fn overlay(img: &RgbImage, mask: &[bool], color: [u8; 3]) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = img.clone();
    let at = |i: usize| mask.get(i).copied().unwrap_or(false);
    let inside = |x: isize, y: isize| {
        x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h && at(y as usize * w + x as usize)
    };
    for y in 0..h {
        for x in 0..w {
            if !at(y * w + x) {
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
