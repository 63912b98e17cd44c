//! The image encoder behind one interface: SAM's ViT or TinyViT (LiteMedSAM, MobileSAM).
//! Whatever the backbone, a batch of preprocessed images becomes image embeddings
//! (B, prompt_embed_dim, grid, grid); the rest of the model sees nothing else.

use super::adapter::AdapterConfig;
use super::config::{EncoderConfig, SamConfig};
use super::nn::{
    is_cpu_f32, needs_grad, to_channels_first, to_channels_last, Derived, LayerNorm, Linear,
};
use super::own_backward::with_backward;
use super::recompute::Recompute;
use super::tiny_vit::TinyVitEncoder;
use super::vit::VitEncoder;
use crate::kernels::conv3x3::conv3x3;
use crate::kernels::with_slice;
use crate::params::Params;
use candle_core::{Module, Result, Tensor};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum ImageEncoder {
    Vit(VitEncoder),
    TinyVit(TinyVitEncoder),
}

impl ImageEncoder {
    pub fn load(p: &Params, cfg: &SamConfig, ad: &AdapterConfig) -> Result<Self> {
        Ok(match &cfg.encoder {
            EncoderConfig::Vit(v) => {
                Self::Vit(VitEncoder::load(p, v, cfg.img_size, cfg.in_chans, ad)?)
            }
            EncoderConfig::TinyVit(t) => Self::TinyVit(TinyVitEncoder::load(p, cfg, t, ad)?),
        })
    }

    /// (B, 3, S, S) preprocessed images -> (B, D, grid, grid).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_slices(x, None)
    }

    /// Like `forward`; with `depth` = Some(D) the batch is volumes of D consecutive slices
    /// and every adapted block's depth branch runs.
    pub fn forward_slices(&self, x: &Tensor, depth: Option<usize>) -> Result<Tensor> {
        self.forward_recomputed(x, depth, None)
    }

    /// `forward_slices`; with `recompute`, every attention block keeps no activations and
    /// runs again in the backward pass (`--checkpoint-blocks`).
    pub fn forward_recomputed(
        &self,
        x: &Tensor,
        depth: Option<usize>,
        recompute: Option<&Arc<Recompute>>,
    ) -> Result<Tensor> {
        match self {
            Self::Vit(e) => e.forward_recomputed(x, depth, recompute),
            Self::TinyVit(e) => e.forward_recomputed(x, depth, recompute),
        }
    }

    pub fn vit(&self) -> Option<&VitEncoder> {
        match self {
            Self::Vit(e) => Some(e),
            Self::TinyVit(_) => None,
        }
    }
}

/// Both backbones end in SAM's neck: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d.
#[derive(Debug, Clone)]
pub struct Neck {
    pub conv1: Linear,
    pub ln1: LayerNorm,
    pub conv2: candle_nn::Conv2d,
    /// conv2's weight as (9, O, C) taps for the CPU kernel.
    pub conv2_taps: Derived,
    pub ln2: LayerNorm,
}

impl Neck {
    /// From `c` encoder channels to `o` embedding channels.
    pub fn load(p: &Params, c: usize, o: usize) -> Result<Self> {
        let w1 = p.get("0.weight", &[o, c, 1, 1])?.reshape((o, c))?;
        let w2 = p.get("2.weight", &[o, o, 3, 3])?;
        let conv_cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv2_taps = Derived::new(vec![w2.clone()], |t| {
            let [w] = t else {
                candle_core::bail!("the neck's taps come from one weight");
            };
            let (o, c, _, _) = w.dims4()?;
            w.permute((2, 3, 0, 1))?.contiguous()?.reshape((9, o, c))
        })?;
        Ok(Self {
            conv1: Linear {
                weight: w1,
                bias: None,
            },
            ln1: LayerNorm::load(&p.pp("1"), o, 1e-6)?,
            conv2: candle_nn::Conv2d::new(w2, None, conv_cfg),
            conv2_taps,
            ln2: LayerNorm::load(&p.pp("3"), o, 1e-6)?,
        })
    }

    /// (B, H, W, C) -> (B, out_chans, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.ln1.forward(&self.conv1.forward(x)?)?;
        let x = self.conv3x3(&x)?;
        let x = self.ln2.forward(&x)?;
        to_channels_first(&x)?.contiguous()
    }

    /// conv2 on a channels-last map, by the CPU kernel when nothing needs a gradient.
    fn conv3x3(&self, x: &Tensor) -> Result<Tensor> {
        let taps = self.conv2_taps.get()?;
        if needs_grad(&[x]) && !needs_grad(&[self.conv2.weight()]) {
            let xc = to_channels_first(x)?.contiguous()?;
            let y = self.conv2.forward(&xc.detach())?;
            let w = self.conv2.weight().clone();
            // The input gradient alone: a transposed conv with the same kernel.
            let y = with_backward(&xc, y, "msa-frozen-neck-conv", move |_, _, dy| {
                dy.conv_transpose2d(&w, 1, 0, 1, 1)
            })?;
            return to_channels_last(&y)?.contiguous();
        }
        if !is_cpu_f32(x) || needs_grad(&[x, &taps]) {
            let y = self.conv2.forward(&to_channels_first(x)?.contiguous()?)?;
            return to_channels_last(&y)?.contiguous();
        }
        let (b, h, w, c) = x.dims4()?;
        let o = taps.dim(1)?;
        let y = with_slice(&x.contiguous()?, |xs| {
            with_slice(&taps, |t| Ok(conv3x3(xs, (b, h, w, c), t, None)))
        })?;
        Tensor::from_vec(y, (b, h, w, o), x.device())
    }
}

/// The depth branch's token layout (MSA-SPEC 2.2): (volumes * D, H, W, C) slices ->
/// (volumes * H * W, D, C), the D slice tokens of each spatial position together.
pub fn slices_to_depth_tokens(x: &Tensor, d: usize) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    if d == 0 || n % d != 0 {
        candle_core::bail!("{n} slices are not a whole number of {d}-slice volumes");
    }
    x.reshape((n / d, d, h, w, c))?
        .permute((0, 2, 3, 1, 4))?
        .contiguous()?
        .reshape((n / d * h * w, d, c))
}

/// The inverse of `slices_to_depth_tokens`, back to the slices' (N, H, W, C) shape.
pub fn depth_tokens_to_slices(
    t: &Tensor,
    (n, h, w, c): (usize, usize, usize, usize),
) -> Result<Tensor> {
    let d = t.dim(1)?;
    t.reshape((n / d, h, w, d, c))?
        .permute((0, 3, 1, 2, 4))?
        .contiguous()?
        .reshape((n, h, w, c))
}

/// The factor pair (a, b) of n with a <= b and a as large as possible.
pub fn closest_factors(n: usize) -> (usize, usize) {
    let mut a = (n as f64).sqrt() as usize;
    while a > 1 && !n.is_multiple_of(a) {
        a -= 1;
    }
    let a = a.max(1);
    (a, n / a)
}
