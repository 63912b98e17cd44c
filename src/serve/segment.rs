//! The work behind the API, free of HTTP: decoding uploads, encoding a slice once per model,
//! answering prompts from the kept embedding, propagating through a volume. Errors that
//! the client caused are `ApiError::bad_request`; the rest are the server's.

use super::error::ApiError;
use super::models::ServedModel;
use super::store::{Content, ImageEntry};
use super::upload;
use crate::infer::volume::{chunk_plan, encode_chunk, VolumePrompts};
use crate::infer::{Embedded, Predictor};
use crate::io::prompt::UserPrompt;
use crate::io::DecodeLimits;
use image::{ImageEncoder, RgbImage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Decodes an upload: a volume (NIfTI, a DICOM file, a zipped DICOM series) when its bytes
/// say so, else an image. `window` picks a volume's intensity scaling as
/// `predict-volume --window` does, `series` one series of a zipped study.
pub fn decode_upload(
    bytes: &[u8],
    window: Option<&str>,
    series: Option<&str>,
    limits: &DecodeLimits,
) -> Result<Content, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the upload is empty"));
    }
    if upload::is_volume(bytes) {
        return upload::decode_volume(bytes, window, series, limits);
    }
    let img = crate::io::image::decode_rgb(bytes, limits).map_err(ApiError::bad_input)?;
    Ok(Content::Image(img))
}

/// The body of `POST /api/images/{id}/predict`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// (x, y, label) in original pixels; label 1 foreground, 0 background.
    #[serde(default)]
    pub points: Vec<[f32; 3]>,
    #[serde(default, rename = "box")]
    pub bbox: Option<[f32; 4]>,
    #[serde(default)]
    pub slice: usize,
    #[serde(default)]
    pub adapters: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
}

impl PredictRequest {
    /// The prompt, checked against the w x h slice.
    pub fn prompt(&self, w: usize, h: usize) -> Result<UserPrompt, ApiError> {
        if self.points.is_empty() && self.bbox.is_none() {
            return Err(ApiError::bad_request("give at least one point or a box"));
        }
        let prompt =
            UserPrompt::from_parts(&self.points, self.bbox).map_err(ApiError::bad_input)?;
        prompt.check_inside(w, h).map_err(ApiError::bad_input)?;
        Ok(prompt)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PredictResponse {
    pub mask_png_base64: String,
    pub iou: f32,
    /// Time spent on this request in the server, encoding included, in milliseconds.
    pub ms: f64,
    /// Whether this request had to run the image encoder.
    pub encoded: bool,
}

/// Answers one prompt on one slice; the slice is encoded on its first prompt per model.
/// The entry is locked while its embedding is found or made, not while decoding, so that
/// prompts on one image decode in parallel.
pub fn predict(
    entry: &std::sync::Mutex<ImageEntry>,
    model: &ServedModel,
    req: &PredictRequest,
) -> Result<PredictResponse, ApiError> {
    let start = std::time::Instant::now();
    let (prompt, (w, h), (embedded, encoded)) = {
        let mut entry = super::store::lock_entry(entry);
        let (w, h, slices) = entry.content.size();
        if req.slice >= slices {
            return Err(ApiError::bad_request(format!(
                "slice {} is outside the image's {slices} slice(s)",
                req.slice
            )));
        }
        let prompt = req.prompt(w, h)?;
        (prompt, (w, h), embedding(&mut entry, model, req.slice)?)
    };
    let mut predictor = Predictor::new(&model.sam);
    predictor.set_embedded(embedded);
    let pred = predictor.predict(&prompt, false)?;
    let mask = pred.binary_mask(0)?;
    let iou = pred.iou_values()?.first().copied().unwrap_or(0.0);
    Ok(PredictResponse {
        mask_png_base64: base64_png(&mask_png(&mask, w, h)?),
        iou,
        ms: start.elapsed().as_secs_f64() * 1e3,
        encoded,
    })
}

/// The kept embedding of `slice` under `model`, or a fresh one (the slice's whole depth
/// chunk for depth adapters, every slice of which is kept). True when it was encoded now.
fn embedding(
    entry: &mut ImageEntry,
    model: &ServedModel,
    slice: usize,
) -> Result<(Embedded, bool), ApiError> {
    let key = model.key();
    if let Some(e) = entry.embedding(&key, slice) {
        return Ok((e, false));
    }
    let fresh = encode(&entry.content, model, slice)?;
    let mut wanted = None;
    for (k, e) in fresh {
        if k == slice {
            wanted = Some(e.clone());
        }
        entry.keep_embedding(&key, k, e);
    }
    let e = wanted.ok_or_else(|| ApiError::internal(format!("slice {slice} was not encoded")))?;
    Ok((e, true))
}

/// Embeddings of `slice` and of the slices encoded with it.
fn encode(
    content: &Content,
    model: &ServedModel,
    slice: usize,
) -> Result<Vec<(usize, Embedded)>, ApiError> {
    let sam = &model.sam;
    let mut predictor = Predictor::new(sam);
    let (Content::Volume { volume, range, .. }, Some(d)) = (content, sam.depth_chunk()) else {
        predictor.set_image(&content.slice_rgb(slice)?)?;
        let e = predictor
            .embedded()
            .ok_or_else(|| ApiError::internal("no embedding after encoding"))?;
        return Ok(vec![(slice, e)]);
    };
    let vol = &volume.volume;
    let [nx, ny, nz] = vol.dims;
    let chunk = chunk_plan(nz, d)
        .into_iter()
        .find(|c| c.owned.contains(&slice))
        .ok_or_else(|| ApiError::internal(format!("no chunk holds slice {slice}")))?;
    let enc = encode_chunk(sam, vol, *range, &chunk.slices)?;
    let mut out = vec![];
    for k in chunk.owned.clone() {
        predictor.set_embedding(
            enc.features.narrow(0, k - chunk.start, 1)?,
            enc.input_size,
            (ny, nx),
        )?;
        if let Some(e) = predictor.embedded() {
            out.push((k, e));
        }
    }
    Ok(out)
}

/// The body of `POST /api/images/{id}/propagate`: `msa predict-volume`'s prompt JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropagateRequest {
    pub prompts: VolumePrompts,
    #[serde(default)]
    pub adapters: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PropagateResponse {
    /// Slices that had prompts, in order.
    pub slices: Vec<usize>,
    /// Voxels per label value.
    pub voxels: BTreeMap<u8, usize>,
    pub ms: f64,
}

/// Segments every prompted slice of a volume (classes in label order, a later class taking
/// the voxels it shares with an earlier one) and keeps the label volume in the entry.
pub fn propagate(
    entry: &mut ImageEntry,
    model: &ServedModel,
    req: &PropagateRequest,
) -> Result<PropagateResponse, ApiError> {
    let start = std::time::Instant::now();
    let (w, h, nz) = entry.content.size();
    if !matches!(entry.content, Content::Volume { .. }) {
        return Err(ApiError::bad_request(
            "propagate needs a volume; this is a 2D image",
        ));
    }
    let per_slice = req.prompts.per_slice(nz).map_err(ApiError::bad_input)?;
    if per_slice.is_empty() {
        return Err(ApiError::bad_request("the prompts name no slice"));
    }
    let mut labels = vec![0u8; w * h * nz];
    let mut predictor = Predictor::new(&model.sam);
    for (&k, prompts) in &per_slice {
        predictor.set_embedded(embedding(entry, model, k)?.0);
        let out = labels
            .get_mut(k * w * h..(k + 1) * w * h)
            .ok_or_else(|| ApiError::bad_request(format!("slice {k} is outside the volume")))?;
        for (label, prompt) in prompts {
            prompt
                .check_inside(w, h)
                .map_err(|e| ApiError::bad_request(format!("slice {k}, class {label}: {e}")))?;
            let mask = predictor.predict(prompt, false)?.binary_mask(0)?;
            for (o, m) in out.iter_mut().zip(mask) {
                if m {
                    *o = *label;
                }
            }
        }
    }
    let mut voxels = BTreeMap::new();
    for &l in labels.iter().filter(|&&l| l > 0) {
        *voxels.entry(l).or_insert(0) += 1;
    }
    entry.labels = Some(labels);
    Ok(PropagateResponse {
        slices: per_slice.keys().copied().collect(),
        voxels,
        ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// A 0/255 mask as a gray PNG.
pub fn mask_png(mask: &[bool], w: usize, h: usize) -> Result<Vec<u8>, ApiError> {
    let data: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
    encode_png(&data, w, h, image::ExtendedColorType::L8)
}

pub fn rgb_png(img: &RgbImage) -> Result<Vec<u8>, ApiError> {
    encode_png(
        img.as_raw(),
        img.width() as usize,
        img.height() as usize,
        image::ExtendedColorType::Rgb8,
    )
}

/// Slice k of a label volume as RGBA: each class in its colour, the rest transparent.
pub fn labels_png(labels: &[u8], w: usize, h: usize, k: usize) -> Result<Vec<u8>, ApiError> {
    use crate::infer::volume::class_colour;
    let slice = labels
        .get(k * w * h..(k + 1) * w * h)
        .ok_or_else(|| ApiError::bad_request(format!("slice {k} is outside the labels")))?;
    let rgba: Vec<u8> = slice
        .iter()
        .flat_map(|&l| match l {
            0 => [0, 0, 0, 0],
            l => {
                let [r, g, b] = class_colour(l);
                [r, g, b, 255]
            }
        })
        .collect();
    encode_png(&rgba, w, h, image::ExtendedColorType::Rgba8)
}

fn encode_png(
    data: &[u8],
    w: usize,
    h: usize,
    colour: image::ExtendedColorType,
) -> Result<Vec<u8>, ApiError> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(data, w as u32, h as u32, colour)
        .map_err(|e| ApiError::internal(format!("cannot encode PNG: {e}")))?;
    Ok(out)
}

pub fn base64_png(png: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(png)
}
