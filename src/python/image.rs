//! numpy images as the RGB images `msa predict` reads from files: uint8 as it is, uint16 and
//! float scaled from their own range to 0..255 (`io::image::to_rgb8`), gray repeated.

use super::errors::value_error;
use image::{DynamicImage, ImageBuffer, Luma, Rgb, RgbImage};
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// (H, W) or (H, W, 3) of uint8, uint16 or float as 8-bit RGB.
pub fn rgb_from_array(image: &Bound<'_, PyAny>) -> PyResult<RgbImage> {
    if let Ok(a) = image.extract::<PyReadonlyArrayDyn<'_, u8>>() {
        let (h, w, c) = dims(a.shape())?;
        let data = a.as_array().iter().copied().collect::<Vec<u8>>();
        return Ok(crate::io::image::to_rgb8(match c {
            1 => DynamicImage::ImageLuma8(buffer::<Luma<u8>>(w, h, data)?),
            _ => DynamicImage::ImageRgb8(buffer::<Rgb<u8>>(w, h, data)?),
        }));
    }
    if let Ok(a) = image.extract::<PyReadonlyArrayDyn<'_, u16>>() {
        let (h, w, c) = dims(a.shape())?;
        let data = a.as_array().iter().copied().collect::<Vec<u16>>();
        return Ok(crate::io::image::to_rgb8(match c {
            1 => DynamicImage::ImageLuma16(buffer::<Luma<u16>>(w, h, data)?),
            _ => DynamicImage::ImageRgb16(buffer::<Rgb<u16>>(w, h, data)?),
        }));
    }
    let floats = match image.extract::<PyReadonlyArrayDyn<'_, f32>>() {
        Ok(a) => (a.shape().to_vec(), a.as_array().iter().copied().collect()),
        Err(_) => match image.extract::<PyReadonlyArrayDyn<'_, f64>>() {
            Ok(a) => (
                a.shape().to_vec(),
                a.as_array().iter().map(|&v| v as f32).collect::<Vec<f32>>(),
            ),
            Err(_) => {
                return Err(value_error(format!(
                    "image: expected a numpy array of uint8, uint16, float32 or float64, got {}",
                    describe(image)
                )))
            }
        },
    };
    let (shape, values) = floats;
    let (h, w, c) = dims(&shape)?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(value_error("image: holds NaN or infinite values"));
    }
    let rgb: Vec<f32> = match c {
        1 => values.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => values,
    };
    Ok(crate::io::image::to_rgb8(DynamicImage::ImageRgb32F(
        buffer::<Rgb<f32>>(w, h, rgb)?,
    )))
}

/// (height, width, channels) of an (H, W) or (H, W, 3) array.
fn dims(shape: &[usize]) -> PyResult<(usize, usize, usize)> {
    match *shape {
        [h, w] if h > 0 && w > 0 => Ok((h, w, 1)),
        [h, w, 3] if h > 0 && w > 0 => Ok((h, w, 3)),
        _ => Err(value_error(format!(
            "image: expected shape (H, W) or (H, W, 3), got {shape:?}"
        ))),
    }
}

fn buffer<P: image::Pixel>(
    w: usize,
    h: usize,
    data: Vec<P::Subpixel>,
) -> PyResult<ImageBuffer<P, Vec<P::Subpixel>>> {
    ImageBuffer::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| value_error(format!("image: {w} x {h} does not fit its values")))
}

/// The type (and dtype and shape, for an array) of a Python value, for messages.
pub fn describe(value: &Bound<'_, PyAny>) -> String {
    if let Ok(a) = value.cast::<numpy::PyUntypedArray>() {
        return format!("an array of {} with shape {:?}", a.dtype(), a.shape());
    }
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an unknown type".into())
}
