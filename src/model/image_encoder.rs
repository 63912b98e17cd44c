//! The ViT image encoder ("ViTDet" style): patch embedding, windowed and global blocks, neck.

use super::attention::{window_partition, window_unpartition, Attention};
use super::config::SamConfig;
use super::nn::{gelu, to_channels_first, to_channels_last, LayerNorm, Linear, PatchConv};
use crate::weights::{Params, Resize};
use candle_core::{Module, Result, Tensor};

#[derive(Debug, Clone)]
pub struct EncoderMlp {
    pub lin1: Linear,
    pub lin2: Linear,
}

impl EncoderMlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.lin2.forward(&gelu(&self.lin1.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: EncoderMlp,
    /// 0 for global attention.
    pub window_size: usize,
}

impl Block {
    pub fn load(p: &Params, cfg: &SamConfig, index: usize) -> Result<Self> {
        let dim = cfg.embed_dim;
        let window_size = if cfg.is_global(index) {
            0
        } else {
            cfg.window_size
        };
        let eps = cfg.layer_norm_eps;
        let mlp_dim = cfg.mlp_dim();
        Ok(Self {
            norm1: LayerNorm::load(&p.pp("norm1"), dim, eps)?,
            attn: Attention::load(
                &p.pp("attn"),
                dim,
                cfg.num_heads,
                cfg.use_rel_pos,
                cfg.attn_size(index),
            )?,
            norm2: LayerNorm::load(&p.pp("norm2"), dim, eps)?,
            mlp: EncoderMlp {
                lin1: Linear::load(&p.pp("mlp.lin1"), dim, mlp_dim, true)?,
                lin2: Linear::load(&p.pp("mlp.lin2"), mlp_dim, dim, true)?,
            },
            window_size,
        })
    }

    /// Attention of norm1(x), on windows or the whole grid, back on the (B, H, W, C) grid.
    pub fn spatial_attention(&self, xn: &Tensor) -> Result<Tensor> {
        if self.window_size == 0 {
            return self.attn.forward(xn);
        }
        let (_, h, w, _) = xn.dims4()?;
        let (windows, padded) = window_partition(xn, self.window_size)?;
        let a = self.attn.forward(&windows)?;
        window_unpartition(&a, self.window_size, padded, (h, w))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.spatial_attention(&self.norm1.forward(x)?)?;
        let x = (x + a)?;
        let m = self.mlp.forward(&self.norm2.forward(&x)?)?;
        x + m
    }
}

#[derive(Debug, Clone)]
pub struct Neck {
    pub conv1: Linear,
    pub ln1: LayerNorm,
    pub conv2: candle_nn::Conv2d,
    pub ln2: LayerNorm,
}

impl Neck {
    fn load(p: &Params, cfg: &SamConfig) -> Result<Self> {
        let (c, o) = (cfg.embed_dim, cfg.out_chans);
        let w1 = p.get("0.weight", &[o, c, 1, 1])?.reshape((o, c))?;
        let w2 = p.get("2.weight", &[o, o, 3, 3])?;
        let conv_cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv1: Linear {
                weight: w1,
                bias: None,
            },
            ln1: LayerNorm::load(&p.pp("1"), o, 1e-6)?,
            conv2: candle_nn::Conv2d::new(w2, None, conv_cfg),
            ln2: LayerNorm::load(&p.pp("3"), o, 1e-6)?,
        })
    }

    /// (B, H, W, C) -> (B, out_chans, H, W).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.ln1.forward(&self.conv1.forward(x)?)?;
        let x = self.conv2.forward(&to_channels_first(&x)?.contiguous()?)?;
        let x = self.ln2.forward(&to_channels_last(&x)?.contiguous()?)?;
        to_channels_first(&x)?.contiguous()
    }
}

#[derive(Debug, Clone)]
pub struct ImageEncoder {
    pub patch_embed: PatchConv,
    pub pos_embed: Option<Tensor>,
    pub blocks: Vec<Block>,
    pub neck: Neck,
}

impl ImageEncoder {
    pub fn load(p: &Params, cfg: &SamConfig) -> Result<Self> {
        let g = cfg.grid();
        let patch_embed = PatchConv::load(
            &p.pp("patch_embed.proj"),
            cfg.in_chans,
            cfg.embed_dim,
            cfg.patch_size,
        )?;
        let pos_embed =
            Some(p.get_resized("pos_embed", &[1, g, g, cfg.embed_dim], Resize::PosEmbed)?);
        let blocks = (0..cfg.depth)
            .map(|i| Block::load(&p.pp(&format!("blocks.{i}")), cfg, i))
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_embed,
            pos_embed,
            blocks,
            neck: Neck::load(&p.pp("neck"), cfg)?,
        })
    }

    /// Patch embedding plus position embedding: (B, 3, S, S) -> (B, S/16, S/16, C).
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.patch_embed.forward_nchw(x)?;
        match &self.pos_embed {
            Some(pos) => x.broadcast_add(pos),
            None => Ok(x),
        }
    }

    /// (B, 3, S, S) preprocessed images -> (B, out_chans, S/16, S/16).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(x)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.neck.forward(&x)
    }
}
