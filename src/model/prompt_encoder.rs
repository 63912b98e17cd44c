//! SAM's prompt encoder: random-Fourier positional encoding of points and box corners,
//! learned label embeddings, and the convolutional mask-prompt path.

use super::config::SamConfig;
use super::nn::{gelu, LayerNorm, Linear, PatchConv};
use crate::params::Params;
use candle_core::{DType, Device, Result, Tensor, D};

#[derive(Debug, Clone)]
pub struct MaskDownscaling {
    pub conv1: PatchConv,
    pub ln1: LayerNorm,
    pub conv2: PatchConv,
    pub ln2: LayerNorm,
    pub conv3: Linear,
}

impl MaskDownscaling {
    fn load(p: &Params, mask_in_chans: usize, embed_dim: usize) -> Result<Self> {
        let c1 = mask_in_chans / 4;
        let w3 = p
            .get("6.weight", &[embed_dim, mask_in_chans, 1, 1])?
            .reshape((embed_dim, mask_in_chans))?;
        Ok(Self {
            conv1: PatchConv::load(&p.pp("0"), 1, c1, 2)?,
            ln1: LayerNorm::load(&p.pp("1"), c1, 1e-6)?,
            conv2: PatchConv::load(&p.pp("3"), c1, mask_in_chans, 2)?,
            ln2: LayerNorm::load(&p.pp("4"), mask_in_chans, 1e-6)?,
            conv3: Linear {
                weight: w3,
                bias: Some(p.get("6.bias", &[embed_dim])?),
            },
        })
    }

    /// (B, 1, 4h, 4w) mask logits -> (B, D, h, w).
    fn forward(&self, masks: &Tensor) -> Result<Tensor> {
        let x = gelu(&self.ln1.forward(&self.conv1.forward_nchw(masks)?)?)?;
        let x = x.permute((0, 3, 1, 2))?.contiguous()?;
        let x = gelu(&self.ln2.forward(&self.conv2.forward_nchw(&x)?)?)?;
        let x = self.conv3.forward(&x)?;
        x.permute((0, 3, 1, 2))?.contiguous()
    }
}

/// One set of prompts per batch item. Points are (x, y) in input-image pixels (the resized,
/// unpadded frame); labels are 1 foreground, 0 background, -1 padding.
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    /// (B, N, 2) and (B, N).
    pub points: Option<(Tensor, Tensor)>,
    /// (B, 4) as x0, y0, x1, y1.
    pub boxes: Option<Tensor>,
    /// (B, 1, 4h, 4w) low-resolution mask logits.
    pub masks: Option<Tensor>,
}

impl Prompts {
    pub fn batch_size(&self) -> Result<usize> {
        if let Some((p, _)) = &self.points {
            return p.dim(0);
        }
        if let Some(b) = &self.boxes {
            return b.dim(0);
        }
        if let Some(m) = &self.masks {
            return m.dim(0);
        }
        Ok(1)
    }
}

#[derive(Debug, Clone)]
pub struct PromptEncoder {
    pub embed_dim: usize,
    pub grid: (usize, usize),
    pub input_size: (usize, usize),
    pub gaussian: Tensor,
    pub point_embeddings: Vec<Tensor>,
    pub not_a_point_embed: Tensor,
    pub no_mask_embed: Tensor,
    pub mask_downscaling: MaskDownscaling,
}

impl PromptEncoder {
    pub fn load(p: &Params, cfg: &SamConfig) -> Result<Self> {
        let d = cfg.prompt_embed_dim;
        let point_embeddings = (0..4)
            .map(|i| p.get(&format!("point_embeddings.{i}.weight"), &[1, d]))
            .collect::<Result<_>>()?;
        Ok(Self {
            embed_dim: d,
            grid: (cfg.grid(), cfg.grid()),
            input_size: (cfg.img_size, cfg.img_size),
            gaussian: p.buffer("pe_layer.positional_encoding_gaussian_matrix", &[2, d / 2])?,
            point_embeddings,
            not_a_point_embed: p.get("not_a_point_embed.weight", &[1, d])?,
            no_mask_embed: p.get("no_mask_embed.weight", &[1, d])?,
            mask_downscaling: MaskDownscaling::load(
                &p.pp("mask_downscaling"),
                cfg.mask_in_chans,
                d,
            )?,
        })
    }

    /// [sin, cos] of 2π (2c - 1) G for coordinates c in [0, 1]: (.., 2) -> (.., D).
    fn pe_encoding(&self, coords: &Tensor) -> Result<Tensor> {
        let dims = coords.dims().to_vec();
        let n = coords.elem_count() / 2;
        let c = ((coords.reshape((n, 2))? * 2.0)? - 1.0)?;
        let proj = (c.matmul(&self.gaussian)? * (2.0 * std::f64::consts::PI))?;
        let pe = Tensor::cat(&[proj.sin()?, proj.cos()?], 1)?;
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.embed_dim;
        pe.reshape(out)
    }

    /// Positional encoding of pixel coordinates (.., 2) as (x, y) in the input frame.
    fn pe_with_coords(&self, coords: &Tensor) -> Result<Tensor> {
        let (h, w) = self.input_size;
        let scale = Tensor::new(&[1.0 / w as f32, 1.0 / h as f32], coords.device())?;
        self.pe_encoding(&coords.broadcast_mul(&scale)?)
    }

    /// Positional encoding of the image-embedding grid's pixel centres: (1, D, h, w).
    pub fn dense_pe(&self) -> Result<Tensor> {
        let (h, w) = self.grid;
        let dev = self.gaussian.device();
        let mut coords = Vec::with_capacity(h * w * 2);
        for y in 0..h {
            for x in 0..w {
                coords.push((x as f32 + 0.5) / w as f32);
                coords.push((y as f32 + 0.5) / h as f32);
            }
        }
        let coords = Tensor::from_vec(coords, (h, w, 2), dev)?;
        self.pe_encoding(&coords)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }

    fn embed_points(&self, points: &Tensor, labels: &Tensor, pad: bool) -> Result<Tensor> {
        let dev = points.device();
        let points = (points.to_dtype(DType::F32)? + 0.5)?;
        let labels = labels.to_dtype(DType::F32)?;
        let (points, labels) = if pad {
            let b = points.dim(0)?;
            let pad_pt = Tensor::zeros((b, 1, 2), DType::F32, dev)?;
            let pad_lb = (Tensor::ones((b, 1), DType::F32, dev)? * -1.0)?;
            (
                Tensor::cat(&[&points, &pad_pt], 1)?,
                Tensor::cat(&[&labels, &pad_lb], 1)?,
            )
        } else {
            (points, labels)
        };
        let pe = self.pe_with_coords(&points)?;
        let labels = labels.unsqueeze(D::Minus1)?;
        let is = |v: f64| -> Result<Tensor> { labels.eq(v)?.to_dtype(DType::F32) };
        let (pad_m, neg_m, pos_m) = (is(-1.0)?, is(0.0)?, is(1.0)?);
        let keep = (1.0 - &pad_m)?;
        let emb = pe.broadcast_mul(&keep)?;
        let emb = (emb + pad_m.broadcast_mul(&self.not_a_point_embed)?)?;
        let emb = (emb + neg_m.broadcast_mul(&self.point_embeddings[0])?)?;
        emb + pos_m.broadcast_mul(&self.point_embeddings[1])?
    }

    fn embed_boxes(&self, boxes: &Tensor) -> Result<Tensor> {
        let b = boxes.dim(0)?;
        let corners = (boxes.to_dtype(DType::F32)? + 0.5)?.reshape((b, 2, 2))?;
        let pe = self.pe_with_coords(&corners)?;
        let corner_emb = Tensor::cat(&[&self.point_embeddings[2], &self.point_embeddings[3]], 0)?;
        pe.broadcast_add(&corner_emb)
    }

    /// Sparse (B, N, D) and dense (B, D, h, w) embeddings.
    pub fn forward(&self, prompts: &Prompts) -> Result<(Tensor, Tensor)> {
        let b = prompts.batch_size()?;
        let dev = self.gaussian.device().clone();
        let sparse = self.sparse(prompts)?;
        let dense = match &prompts.masks {
            Some(m) => self.mask_downscaling.forward(&m.to_dtype(DType::F32)?)?,
            None => self.no_mask_dense(b, &dev)?,
        };
        Ok((sparse, dense))
    }

    /// The sparse embeddings alone: points and box corners, (B, N, D).
    pub fn sparse(&self, prompts: &Prompts) -> Result<Tensor> {
        let b = prompts.batch_size()?;
        let dev = self.gaussian.device().clone();
        let mut parts = Vec::new();
        if let Some((pts, lbl)) = &prompts.points {
            parts.push(self.embed_points(pts, lbl, prompts.boxes.is_none())?);
        }
        if let Some(boxes) = &prompts.boxes {
            parts.push(self.embed_boxes(boxes)?);
        }
        match parts.len() {
            0 => Tensor::zeros((b, 0, self.embed_dim), DType::F32, &dev),
            _ => Tensor::cat(&parts, 1),
        }
    }

    fn no_mask_dense(&self, b: usize, _dev: &Device) -> Result<Tensor> {
        let (h, w) = self.grid;
        self.no_mask_embed
            .reshape((1, self.embed_dim, 1, 1))?
            .broadcast_as((b, self.embed_dim, h, w))?
            .contiguous()
    }
}
