//! The ViT image encoder ("ViTDet" style): patch embedding, windowed and global blocks, neck.

use super::adapter::{AdapterConfig, BlockAdapters, Lora};
use super::attention::{window_partition_filled, window_unpartition, Attention};
use super::config::{SamConfig, VitConfig};
use super::depth::{closest_factors, depth_tokens_to_slices, slices_to_depth_tokens};
use super::neck::Neck;
use super::nn::{FeedForward, LayerNorm, Linear, PatchConv};
use super::options::AttentionKernel;
use super::own_backward::Activation;
use super::recompute::{run_block, Recompute};
use crate::params::{Params, Resize};
use candle_core::{Result, Tensor};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: FeedForward,
    /// 0 for global attention.
    pub window_size: usize,
    pub adapters: BlockAdapters,
}

impl Block {
    /// Block `index` of an encoder whose token grid has side `grid`.
    pub fn load(p: &Params, cfg: &VitConfig, grid: usize, index: usize) -> Result<Self> {
        let kernel = AttentionKernel::from_env();
        Self::load_adapted(p, cfg, (grid, index), &AdapterConfig::none(), kernel)
    }

    /// Block `index` of a grid of side `grid`, with the adapters `ad` asks for.
    pub fn load_adapted(
        p: &Params,
        cfg: &VitConfig,
        (grid, index): (usize, usize),
        ad: &AdapterConfig,
        kernel: AttentionKernel,
    ) -> Result<Self> {
        let dim = cfg.embed_dim;
        let window_size = if cfg.is_global(index) {
            0
        } else {
            cfg.window_size
        };
        let eps = cfg.layer_norm_eps;
        let mlp_dim = cfg.mlp_dim();
        let mut attn = Attention::load(
            &p.pp("attn"),
            dim,
            cfg.num_heads,
            (cfg.use_rel_pos, cfg.attn_size(index, grid)),
            kernel,
        )?;
        if ad.lora_rank > 0 {
            attn.lora = Some(Lora::load(&p.pp("attn"), dim, 3 * dim, ad.lora_rank)?);
        }
        Ok(Self {
            norm1: LayerNorm::load(&p.pp("norm1"), dim, eps)?,
            attn,
            norm2: LayerNorm::load(&p.pp("norm2"), dim, eps)?,
            mlp: FeedForward {
                fc1: Linear::load(&p.pp("mlp.lin1"), dim, mlp_dim, true)?,
                fc2: Linear::load(&p.pp("mlp.lin2"), mlp_dim, dim, true)?,
                act: Activation::Gelu,
            },
            window_size,
            adapters: BlockAdapters::load(p, dim, ad)?,
        })
    }

    /// Attention of norm1(x), on windows or the whole grid, back on the (B, H, W, C) grid.
    ///
    /// Windowed: SAM pads norm1(x) with zero tokens and projects every window. A zero
    /// token's qkv is the qkv bias, and only image tokens survive the crop, so qkv and proj
    /// run on the image tokens alone and the padding gets the bias: the same values and
    /// gradients (a trainable bias also gets the padding's share through the fill), a third
    /// of the projection work at 256 px.
    pub fn spatial_attention(&self, xn: &Tensor) -> Result<Tensor> {
        let ws = self.window_size;
        if ws == 0 {
            return self.attn.forward(xn);
        }
        let (_, h, w, _) = xn.dims4()?;
        let qkv = self.attn.qkv_forward(xn)?;
        let fill = self.attn.padding_qkv()?;
        let (windows, padded) = window_partition_filled(&qkv, ws, &fill)?;
        let core = window_unpartition(&self.attn.core(&windows)?, ws, padded, (h, w))?;
        self.attn.proj.forward(&core)
    }

    /// x (N, H, W, C). With `depth` = Some(D), N is volumes x D consecutive slices and the
    /// depth branch (MSA-SPEC 2.2) runs beside the spatial one.
    pub fn forward(&self, x: &Tensor, depth: Option<usize>) -> Result<Tensor> {
        let xn = self.norm1.forward(x)?;
        let a = self.spatial_attention(&xn)?;
        let a = self
            .adapters
            .attention_branch(a, depth, |d| self.depth_attention(&xn, d))?;
        let x = (x + a)?;
        let h = self.norm2.forward(&x)?;
        let x = (&x + self.mlp.forward(&h)?)?;
        self.adapters.beside_mlp(x, &h)
    }

    /// Attention across the D slices at each spatial position, the slices laid out on a
    /// dh x dw grid so that the block's own attention and rel-pos tables apply.
    fn depth_attention(&self, xn: &Tensor, d: usize) -> Result<Tensor> {
        let (dh, dw) = closest_factors(d);
        let xd = slices_to_depth_tokens(xn, d)?;
        let c = xd.dim(2)?;
        let xd = self.attn.forward(&xd.reshape((xd.dim(0)?, dh, dw, c))?)?;
        depth_tokens_to_slices(&xd.reshape((xd.dim(0)?, d, c))?, xn.dims4()?)
    }
}

#[derive(Debug, Clone)]
pub struct VitEncoder {
    pub patch_embed: PatchConv,
    pub pos_embed: Option<Tensor>,
    pub blocks: Vec<Block>,
    pub neck: Neck,
}

impl VitEncoder {
    pub fn load(
        p: &Params,
        sam: &SamConfig,
        cfg: &VitConfig,
        ad: &AdapterConfig,
        kernel: AttentionKernel,
    ) -> Result<Self> {
        let (img_size, in_chans) = (sam.img_size, sam.in_chans);
        let g = img_size / cfg.patch_size;
        let patch_embed = PatchConv::load(
            &p.pp("patch_embed.proj"),
            in_chans,
            cfg.embed_dim,
            cfg.patch_size,
        )?;
        let pos_embed =
            Some(p.get_resized("pos_embed", &[1, g, g, cfg.embed_dim], Resize::PosEmbed)?);
        let blocks = (0..cfg.depth)
            .map(|i| Block::load_adapted(&p.pp(&format!("blocks.{i}")), cfg, (g, i), ad, kernel))
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_embed,
            pos_embed,
            blocks,
            neck: Neck::load(&p.pp("neck"), cfg.embed_dim, cfg.out_chans)?,
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

    /// (B, 3, S, S) preprocessed images -> (B, out_chans, S/16, S/16). With `depth` =
    /// Some(D) the batch is volumes of D consecutive slices and every block's depth branch
    /// runs; with `recompute`, every block is recomputed in the backward pass.
    pub fn forward(
        &self,
        x: &Tensor,
        depth: Option<usize>,
        recompute: Option<&Arc<Recompute>>,
    ) -> Result<Tensor> {
        use crate::runtime::memory::trace;
        let dev = x.device().clone();
        let mut x = self.embed(x)?;
        trace(&dev, || "vit patch_embed".into());
        for (i, block) in self.blocks.iter().enumerate() {
            x = run_block(recompute, &x, block, move |b, x| b.forward(x, depth))?;
            trace(&dev, || format!("vit block {i}"));
        }
        let out = self.neck.forward(&x)?;
        trace(&dev, || "vit neck".into());
        Ok(out)
    }
}
