//! SAM's mask decoder: a two-way transformer between prompt tokens and the image embedding,
//! an upscaling path, and one hypernetwork MLP per mask token.

use super::adapter::{mean_prompt, Adapter, AdapterConfig, HyperAdapter};
use super::config::SamConfig;
use super::nn::{
    gelu, needs_grad, softmax, FeedForward, LayerNorm, Linear, Mlp, MultiHeadAttention, UpConv2x2,
};
use super::options::AttentionKernel;
use super::own_backward::Activation;
use crate::kernels::linear::Epilogue;
use crate::params::Params;
use candle_core::{Result, Tensor};

/// nn.LayerNorm's default, used throughout the decoder's transformer.
const DECODER_LN_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
pub struct DecoderAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
    /// Runs on `kernels::attention::flash` (`AttentionKernel::Flash`).
    pub flash: bool,
}

impl DecoderAttention {
    fn load(
        p: &Params,
        (dim, num_heads, downsample): (usize, usize, usize),
        kernel: AttentionKernel,
    ) -> Result<Self> {
        let inner = dim / downsample;
        Ok(Self {
            q_proj: Linear::load(&p.pp("q_proj"), dim, inner, true)?,
            k_proj: Linear::load(&p.pp("k_proj"), dim, inner, true)?,
            v_proj: Linear::load(&p.pp("v_proj"), dim, inner, true)?,
            out_proj: Linear::load(&p.pp("out_proj"), inner, dim, true)?,
            num_heads,
            flash: kernel == AttentionKernel::Flash,
        })
    }

    /// q (B, Nq, D), k and v (B, Nk, D) -> (B, Nq, D).
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(q)?;
        let k = self.k_proj.forward(k)?;
        let v = self.v_proj.forward(v)?;
        self.attend_projected(&q, &k, &v)
    }

    /// The attention after the input projections, then `out_proj`.
    pub fn attend_projected(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let attention = MultiHeadAttention {
            num_heads: self.num_heads,
            flash: self.flash,
        };
        self.out_proj.forward(&attention.forward(q, k, v)?)
    }

    /// Token->image attention: projected token queries `q` (B, Nq, inner) over image
    /// tokens given unprojected, keys `k_in` and values `v_in` (B, N, D); then `out_proj`.
    pub fn attend_to_image(&self, q: &Tensor, k_in: &Tensor, v_in: &Tensor) -> Result<Tensor> {
        let (_, nq, inner) = q.dims3()?;
        if self.fold(&[q, k_in, v_in]) && self.num_heads * nq < inner {
            return self.attend_to_image_folded(q, k_in, v_in);
        }
        let k = self.k_proj.forward(k_in)?;
        let v = self.v_proj.forward(v_in)?;
        self.attend_projected(q, &k, &v)
    }

    /// Image->token attention: image queries (projected, or not yet) over token keys and
    /// values given unprojected (B, T, D); then `out_proj`.
    pub fn attend_from_image(
        &self,
        queries: ImageQueries,
        kt_in: &Tensor,
        vt_in: &Tensor,
    ) -> Result<Tensor> {
        let (_, t, _) = kt_in.dims3()?;
        let inner = self.k_proj.out_dim();
        let q = match &queries {
            ImageQueries::Raw(x) | ImageQueries::Projected(x) => x,
        };
        if self.fold(&[q, kt_in, vt_in]) && self.num_heads * t < inner {
            return self.attend_from_image_folded(queries, kt_in, vt_in);
        }
        let qp = match queries {
            ImageQueries::Projected(qp) => qp,
            ImageQueries::Raw(x) => self.q_proj.forward(&x)?,
        };
        let k = self.k_proj.forward(kt_in)?;
        let v = self.v_proj.forward(vt_in)?;
        self.attend_projected(&qp, &k, &v)
    }

    /// Whether the folded forms below may run: they are for inference (nothing needs a
    /// gradient), and they hold the attention matrix, which the flash kernels never do.
    fn fold(&self, inputs: &[&Tensor]) -> bool {
        !self.flash && self.frozen(inputs)
    }

    fn frozen(&self, inputs: &[&Tensor]) -> bool {
        let mut ts = inputs.to_vec();
        for l in [&self.q_proj, &self.k_proj, &self.v_proj, &self.out_proj] {
            ts.push(&l.weight);
            ts.extend(l.bias.iter());
        }
        !needs_grad(&ts)
    }

    /// A projection's (inner, D) weight as (heads, hd, D).
    fn per_head(&self, w: &Tensor) -> Result<Tensor> {
        let (inner, d) = w.dims2()?;
        w.reshape((self.num_heads, inner / self.num_heads, d))
    }

    fn scale(&self) -> f64 {
        let hd = self.k_proj.out_dim() / self.num_heads;
        (hd as f64).powf(-0.5)
    }

    /// `attend_to_image` without projecting the N image tokens, for few queries:
    /// q·(Wk x + bk) = (Wkᵀ q)·x + q·bk, where q·bk is the same for every key and drops
    /// out of the softmax, and Σ p (Wv x + bv) = Wv (Σ p x) + bv since Σ p = 1. The image
    /// side costs 2 N D (heads Nq) multiply-adds instead of 2 N D inner.
    fn attend_to_image_folded(&self, q: &Tensor, k_in: &Tensor, v_in: &Tensor) -> Result<Tensor> {
        let (b, nq, inner) = q.dims3()?;
        let (h, d) = (self.num_heads, k_in.dim(2)?);
        let hd = inner / h;
        let qh = q.reshape((b, nq, h, hd))?.transpose(1, 2)?.contiguous()?;
        let qk = qh.broadcast_matmul(&self.per_head(&self.k_proj.weight)?)?; // (B, H, Nq, D)
        let logits = (qk.reshape((b, h * nq, d))?.matmul(&k_in.t()?)? * self.scale())?;
        let p = softmax(&logits)?; // (B, H*Nq, N)
        let px = p.matmul(&v_in.contiguous()?)?.reshape((b, h, nq, d))?;
        let wv = self.per_head(&self.v_proj.weight)?.transpose(1, 2)?; // (H, D, hd)
        let o = px
            .broadcast_matmul(&wv)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, nq, inner))?;
        let o = match &self.v_proj.bias {
            Some(bv) => o.broadcast_add(bv)?,
            None => o,
        };
        self.out_proj.forward(&o)
    }

    /// `attend_from_image` for few tokens, with the output projection folded into the T
    /// token values (Wo v_j per head), so that the N image tokens are never projected out;
    /// unprojected image queries also meet keys mapped into their space: (Wq x + bq)·k =
    /// x·(Wqᵀ k) + bq·k.
    fn attend_from_image_folded(
        &self,
        queries: ImageQueries,
        kt_in: &Tensor,
        vt_in: &Tensor,
    ) -> Result<Tensor> {
        let (h, inner) = (self.num_heads, self.k_proj.out_dim());
        let hd = inner / h;
        let heads = |x: &Tensor| -> Result<Tensor> {
            let (b, n, _) = x.dims3()?;
            x.reshape((b, n, h, hd))?.transpose(1, 2)?.contiguous()
        };
        let kt = heads(&self.k_proj.forward(kt_in)?)?; // (B, H, T, hd)
        let (b, _, t, _) = kt.dims4()?;
        let logits = match queries {
            ImageQueries::Raw(x) => {
                let (n, d) = (x.dim(1)?, x.dim(2)?);
                let kq = kt.broadcast_matmul(&self.per_head(&self.q_proj.weight)?)?; // (B, H, T, D)
                let l = x.contiguous()?.matmul(&kq.reshape((b, h * t, d))?.t()?)?;
                match &self.q_proj.bias {
                    Some(bq) => {
                        let c = kt.broadcast_mul(&bq.reshape((1, h, 1, hd))?)?.sum(3)?;
                        l.broadcast_add(&c.reshape((b, 1, h * t))?)?
                    }
                    None => l,
                }
                .reshape((b, n, h, t))?
            }
            ImageQueries::Projected(qp) => {
                let l = heads(&qp)?.matmul(&kt.t()?)?; // (B, H, N, T)
                l.transpose(1, 2)?.contiguous()?
            }
        };
        let n = logits.dim(1)?;
        let p = softmax(&(logits * self.scale())?)?.reshape((b, n, h * t))?;
        let vt = heads(&self.v_proj.forward(vt_in)?)?; // (B, H, T, hd)
        let wo = &self.out_proj.weight; // (D, inner)
        let d = wo.dim(0)?;
        let wo = wo.reshape((d, h, hd))?.permute((1, 2, 0))?; // (H, hd, D)
        let v_out = vt.broadcast_matmul(&wo)?.reshape((b, h * t, d))?;
        let out = p.matmul(&v_out)?;
        match &self.out_proj.bias {
            Some(bo) => out.broadcast_add(bo),
            None => Ok(out),
        }
    }
}

/// The image side of an image->token attention: the image tokens (+ PE) as they are, or
/// already through `q_proj` (cached per image).
pub enum ImageQueries {
    Raw(Tensor),
    Projected(Tensor),
}

#[derive(Debug, Clone)]
pub struct TwoWayBlock {
    pub self_attn: DecoderAttention,
    pub norm1: LayerNorm,
    pub cross_token_to_image: DecoderAttention,
    pub norm2: LayerNorm,
    pub mlp: FeedForward,
    pub norm3: LayerNorm,
    pub cross_image_to_token: DecoderAttention,
    pub norm4: LayerNorm,
    pub skip_first_layer_pe: bool,
    /// HyP-Adpt on the token->image attention output.
    pub hyper_adapter: Option<HyperAdapter>,
    /// Beside the token MLP, scaled by `mlp_scale`.
    pub mlp_adapter: Option<Adapter>,
    /// With skip, on the image stream after the image->token residual.
    pub image_adapter: Option<Adapter>,
    pub mlp_scale: f64,
}

impl TwoWayBlock {
    fn load(
        p: &Params,
        cfg: &SamConfig,
        (index, ad): (usize, &AdapterConfig),
        kernel: AttentionKernel,
    ) -> Result<Self> {
        let (d, heads) = (cfg.prompt_embed_dim, cfg.decoder_num_heads);
        let ln = |name: &str| LayerNorm::load(&p.pp(name), d, DECODER_LN_EPS);
        Ok(Self {
            self_attn: DecoderAttention::load(&p.pp("self_attn"), (d, heads, 1), kernel)?,
            norm1: ln("norm1")?,
            cross_token_to_image: DecoderAttention::load(
                &p.pp("cross_attn_token_to_image"),
                (d, heads, 2),
                kernel,
            )?,
            norm2: ln("norm2")?,
            mlp: FeedForward {
                fc1: Linear::load(&p.pp("mlp.lin1"), d, cfg.decoder_mlp_dim, true)?,
                fc2: Linear::load(&p.pp("mlp.lin2"), cfg.decoder_mlp_dim, d, true)?,
                act: Activation::Relu,
            },
            norm3: ln("norm3")?,
            cross_image_to_token: DecoderAttention::load(
                &p.pp("cross_attn_image_to_token"),
                (d, heads, 2),
                kernel,
            )?,
            norm4: ln("norm4")?,
            skip_first_layer_pe: index == 0,
            hyper_adapter: ad
                .decoder
                .then(|| HyperAdapter::load(&p.pp("Hyper_Adapter"), d, ad))
                .transpose()?,
            mlp_adapter: ad
                .decoder
                .then(|| Adapter::load(&p.pp("MLP_Adapter"), d, ad, false))
                .transpose()?,
            image_adapter: ad
                .decoder
                .then(|| Adapter::load(&p.pp("Image_Adapter"), d, ad, true))
                .transpose()?,
            mlp_scale: ad.mlp_scale,
        })
    }

    /// One layer: token self-attention, token->image, token MLP, image->token.
    /// `prompt` (B, D) is the mean sparse prompt embedding that conditions HyP-Adpt.
    pub fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
        prompt: &Tensor,
        cached: Option<&FirstLayerProjections>,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;

        let q = (&queries + query_pe)?;
        let t2i = &self.cross_token_to_image;
        let i2t = &self.cross_image_to_token;
        // The image side of both cross-attentions: cached per image for the first layer.
        let q_tokens = t2i.q_proj.forward(&q)?;
        let (mut a, image_queries) = match cached {
            Some(c) => (
                t2i.attend_projected(&q_tokens, &c.k_t2i, &c.v_t2i)?,
                ImageQueries::Projected(c.q_i2t.clone()),
            ),
            None => {
                let k = (keys + key_pe)?;
                let a = t2i.attend_to_image(&q_tokens, &k, keys)?;
                (a, ImageQueries::Raw(k))
            }
        };
        if let Some(hyp) = &self.hyper_adapter {
            a = hyp.forward(&a, prompt)?;
        }
        let queries = self.norm2.forward(&(queries + a)?)?;

        let mut m = self.mlp.forward(&queries)?;
        if let Some(ma) = &self.mlp_adapter {
            m = (m + (ma.forward(&queries)? * self.mlp_scale)?)?;
        }
        let queries = self.norm3.forward(&(queries + m)?)?;

        let q = (&queries + query_pe)?;
        let a = i2t.attend_from_image(image_queries, &q, &queries)?;
        let mut keys = (keys + a)?;
        if let Some(ia) = &self.image_adapter {
            keys = ia.forward(&keys)?;
        }
        let keys = self.norm4.forward(&keys)?;
        Ok((queries, keys))
    }
}

#[derive(Debug, Clone)]
pub struct TwoWayTransformer {
    pub layers: Vec<TwoWayBlock>,
    pub final_attn: DecoderAttention,
    pub norm_final: LayerNorm,
}

impl TwoWayTransformer {
    fn load(
        p: &Params,
        cfg: &SamConfig,
        ad: &AdapterConfig,
        kernel: AttentionKernel,
    ) -> Result<Self> {
        let d = cfg.prompt_embed_dim;
        let layers = (0..cfg.decoder_depth)
            .map(|i| TwoWayBlock::load(&p.pp(&format!("layers.{i}")), cfg, (i, ad), kernel))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            final_attn: DecoderAttention::load(
                &p.pp("final_attn_token_to_image"),
                (d, cfg.decoder_num_heads, 2),
                kernel,
            )?,
            norm_final: LayerNorm::load(&p.pp("norm_final_attn"), d, DECODER_LN_EPS)?,
        })
    }

    /// image (B, HW, D), image_pe (B, HW, D), tokens (B, T, D), prompt (B, D)
    /// -> (tokens, image).
    pub fn forward(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        tokens: &Tensor,
        prompt: &Tensor,
        cached: Option<&FirstLayerProjections>,
    ) -> Result<(Tensor, Tensor)> {
        let (mut queries, mut keys) = (tokens.clone(), image.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            let c = if i == 0 { cached } else { None };
            (queries, keys) = layer.forward(&queries, &keys, tokens, image_pe, prompt, c)?;
        }
        let q = (&queries + tokens)?;
        let k = (&keys + image_pe)?;
        let fa = &self.final_attn;
        let a = fa.attend_to_image(&fa.q_proj.forward(&q)?, &k, &keys)?;
        let queries = self.norm_final.forward(&(queries + a)?)?;
        Ok((queries, keys))
    }
}

#[derive(Debug, Clone)]
pub struct MaskDecoder {
    pub transformer: TwoWayTransformer,
    pub iou_token: Tensor,
    pub mask_tokens: Tensor,
    pub upscale1: UpConv2x2,
    pub upscale_norm: LayerNorm,
    pub upscale2: UpConv2x2,
    pub hypernetworks: Vec<Mlp>,
    pub iou_head: Mlp,
    pub num_mask_tokens: usize,
}

/// Decoder outputs for every mask token: (B, T, 4h, 4w) logits and (B, T) IoU estimates.
pub struct DecoderOutput {
    pub low_res_logits: Tensor,
    pub iou: Tensor,
}

impl MaskDecoder {
    pub fn load(
        p: &Params,
        cfg: &SamConfig,
        ad: &AdapterConfig,
        kernel: AttentionKernel,
    ) -> Result<Self> {
        let d = cfg.prompt_embed_dim;
        let t = cfg.num_mask_tokens();
        let hypernetworks = (0..t)
            .map(|i| {
                Mlp::load(
                    &p.pp(&format!("output_hypernetworks_mlps.{i}")),
                    &[d, d, d, d / 8],
                )
            })
            .collect::<Result<_>>()?;
        let mut iou_dims = vec![d];
        iou_dims.extend(std::iter::repeat_n(
            cfg.iou_head_hidden_dim,
            cfg.iou_head_depth - 1,
        ));
        iou_dims.push(t);
        Ok(Self {
            transformer: TwoWayTransformer::load(&p.pp("transformer"), cfg, ad, kernel)?,
            iou_token: p.get("iou_token.weight", &[1, d])?,
            mask_tokens: p.get("mask_tokens.weight", &[t, d])?,
            upscale1: UpConv2x2::load(&p.pp("output_upscaling.0"), d, d / 4)?,
            upscale_norm: LayerNorm::load(&p.pp("output_upscaling.1"), d / 4, 1e-6)?,
            upscale2: UpConv2x2::load(&p.pp("output_upscaling.3"), d / 4, d / 8)?,
            hypernetworks,
            iou_head: Mlp::load(&p.pp("iou_prediction_head"), &iou_dims)?,
            num_mask_tokens: t,
        })
    }

    /// image (B or 1, D, h, w), image_pe (1, D, h, w), sparse (B, N, D), dense (B, D, h, w).
    /// An image batch of 1 is shared by all B prompt sets; otherwise batches must match.
    pub fn forward(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
    ) -> Result<DecoderOutput> {
        let b = sparse.dim(0)?;
        let (bi, d, h, w) = image.dims4()?;
        if bi != b && bi != 1 {
            candle_core::bail!("image batch {bi} does not match prompt batch {b}");
        }
        let src = image.broadcast_as((b, d, h, w))?.add(dense)?;
        let src = src.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let pos = image_pe.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        self.run(&src, &pos, sparse, (h, w), None)
    }

    /// Prompt-independent work on one image (1, D, h, w) for prompts without a mask input,
    /// whose dense embedding is the constant `no_mask` (1, D): the token-major image stream
    /// and the first layer's image-side projections.
    pub fn image_context(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        no_mask: &Tensor,
    ) -> Result<ImageContext> {
        let (_, d, h, w) = image.dims4()?;
        let src = image
            .flatten_from(2)?
            .transpose(1, 2)?
            .broadcast_add(&no_mask.reshape((1, 1, d))?)?
            .contiguous()?;
        let pos = image_pe.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let first = match self.transformer.layers.first() {
            Some(layer) => {
                let k = (&src + &pos)?;
                let t2i = &layer.cross_token_to_image;
                Some(FirstLayerProjections {
                    k_t2i: t2i.k_proj.forward(&k)?,
                    v_t2i: t2i.v_proj.forward(&src)?,
                    q_i2t: layer.cross_image_to_token.q_proj.forward(&k)?,
                })
            }
            None => None,
        };
        Ok(ImageContext {
            src,
            pos,
            first,
            grid: (h, w),
        })
    }

    /// Like `forward` with the image part taken from `ctx` (no mask input).
    pub fn forward_with_context(
        &self,
        ctx: &ImageContext,
        sparse: &Tensor,
    ) -> Result<DecoderOutput> {
        let b = sparse.dim(0)?;
        let widen = |t: &Tensor| -> Result<Tensor> {
            if b == 1 {
                return Ok(t.clone());
            }
            let (_, n, c) = t.dims3()?;
            t.broadcast_as((b, n, c))?.contiguous()
        };
        let first = match &ctx.first {
            Some(f) => Some(FirstLayerProjections {
                k_t2i: widen(&f.k_t2i)?,
                v_t2i: widen(&f.v_t2i)?,
                q_i2t: widen(&f.q_i2t)?,
            }),
            None => None,
        };
        self.run(
            &widen(&ctx.src)?,
            &ctx.pos,
            sparse,
            ctx.grid,
            first.as_ref(),
        )
    }

    /// src (B, HW, D) image stream, pos (1, HW, D).
    fn run(
        &self,
        src: &Tensor,
        pos: &Tensor,
        sparse: &Tensor,
        (h, w): (usize, usize),
        first: Option<&FirstLayerProjections>,
    ) -> Result<DecoderOutput> {
        let (b, _, d) = src.dims3()?;
        let out_tokens = Tensor::cat(&[&self.iou_token, &self.mask_tokens], 0)?;
        let out_tokens = out_tokens
            .unsqueeze(0)?
            .broadcast_as((b, 1 + self.num_mask_tokens, d))?
            .contiguous()?;
        let tokens = if sparse.dim(1)? == 0 {
            out_tokens
        } else {
            Tensor::cat(&[&out_tokens, sparse], 1)?
        };
        let pos = if b == 1 {
            pos.clone()
        } else {
            pos.broadcast_as((b, h * w, d))?.contiguous()?
        };
        let prompt = mean_prompt(sparse)?;
        let (hs, src) = self
            .transformer
            .forward(src, &pos, &tokens, &prompt, first)?;
        let up = self.upscale(&src.reshape((b, h, w, d))?)?; // (B, 4h, 4w, d/8)
        let hyper = (0..self.num_mask_tokens)
            .map(|i| self.hypernetworks[i].forward(&hs.narrow(1, 1 + i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper = Tensor::cat(&hyper, 1)?; // (B, T, d/8)
        let (uh, uw, uc) = (4 * h, 4 * w, d / 8);
        let masks = hyper
            .matmul(&up.reshape((b, uh * uw, uc))?.t()?)?
            .reshape((b, self.num_mask_tokens, uh, uw))?;
        let iou = self.iou_head.forward(&hs.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok(DecoderOutput {
            low_res_logits: masks,
            iou,
        })
    }

    pub fn upscale(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.upscale1.forward(x)?;
        let x = gelu(&self.upscale_norm.forward(&x)?)?;
        self.upscale2.forward_act(&x, Epilogue::Gelu)
    }
}

/// The first layer's image-side projections: token->image keys and values, image->token
/// queries. They depend on the image alone when no mask is prompted.
#[derive(Debug, Clone)]
pub struct FirstLayerProjections {
    pub k_t2i: Tensor,
    pub v_t2i: Tensor,
    pub q_i2t: Tensor,
}

/// What the decoder can reuse across prompts on one image.
#[derive(Debug, Clone)]
pub struct ImageContext {
    pub src: Tensor,
    pub pos: Tensor,
    pub first: Option<FirstLayerProjections>,
    pub grid: (usize, usize),
}

/// Which of the mask tokens a caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskSelection {
    /// SAM: token 0 alone, or tokens 1..=3 for ambiguous prompts.
    Sam { multimask: bool },
    /// MSA: the first n tokens, one per class.
    Classes(usize),
}

impl DecoderOutput {
    pub fn select(&self, how: MaskSelection) -> Result<(Tensor, Tensor)> {
        let t = self.iou.dim(1)?;
        let (start, n) = match how {
            MaskSelection::Sam { multimask: true } => (1, t - 1),
            MaskSelection::Sam { multimask: false } => (0, 1),
            MaskSelection::Classes(n) => (0, n.min(t)),
        };
        Ok((
            self.low_res_logits.narrow(1, start, n)?,
            self.iou.narrow(1, start, n)?,
        ))
    }
}
