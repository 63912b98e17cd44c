//! The TinyViT image encoder of LiteMedSAM and MobileSAM (MSA-SPEC 1.6), with MSA adapters
//! in its attention blocks (MSA-SPEC 2.6). Maps stay channels-last (B, H, W, C) throughout;
//! every Conv2d_BN is folded into one convolution with bias.

use super::adapter::{AdapterConfig, BlockAdapters, Lora};
use super::attention::{window_partition_filled, window_unpartition};
use super::config::{SamConfig, TinyVitConfig};
use super::depth::{closest_factors, depth_tokens_to_slices, slices_to_depth_tokens};
use super::neck::Neck;
use super::nn::{
    gelu, to_channels_last, BiasedAttention, DepthwiseConv, Derived, FeedForward, LayerNorm, Linear,
};
use super::own_backward::Activation;
use super::recompute::{run_block, Recompute};
use crate::kernels::depthwise::DepthwiseGeometry;
use crate::kernels::linear::Epilogue;
use crate::params::Params;
use candle_core::{Result, Tensor};
use std::sync::Arc;

const BN_EPS: f64 = 1e-5;
const LN_EPS: f64 = 1e-5;

/// Conv2d (no bias) + eval-mode BatchNorm2d as one conv: weight (Cout, Cin/groups, k, k)
/// and bias (Cout). When the parameters train, the fold is redone at every use.
fn conv_bn(p: &Params, cout: usize, cin_per_group: usize, k: usize) -> Result<Derived> {
    folded_conv_bn(p, cout, cin_per_group, k, false)
}

/// `conv_bn` with the weight laid out as the folded buffer holds it: (Cout, Cin/g, k, k),
/// or tap-major (k * k, Cout) for a depthwise conv (`taps`).
fn folded_conv_bn(
    p: &Params,
    cout: usize,
    cin_per_group: usize,
    k: usize,
    taps: bool,
) -> Result<Derived> {
    let weight = p.get("c.weight", &[cout, cin_per_group, k, k])?;
    let gamma = p.get("bn.weight", &[cout])?;
    let beta = p.get("bn.bias", &[cout])?;
    let mean = p.buffer("bn.running_mean", &[cout])?;
    let var = p.buffer("bn.running_var", &[cout])?;
    p.optional_buffer("bn.num_batches_tracked", &[])?;
    Derived::new(vec![weight, gamma, beta, mean, var], move |t| {
        let [w, gamma, beta, mean, var] = t else {
            candle_core::bail!("conv_bn takes five tensors");
        };
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let cout = scale.dim(0)?;
        let w = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let w = if taps {
            w.flatten_from(1)?.t()?.contiguous()?
        } else {
            w
        };
        let b = (beta - (mean * &scale)?)?;
        // One flat buffer, weight then bias, so that both come back as contiguous views.
        Tensor::cat(&[w.flatten_all()?, b], 0)
    })
}

/// The folded (weight, bias) of a `conv_bn` with `cout` outputs, the weight as `rows` rows
/// (Cout for a conv, k * k taps for a depthwise one); both contiguous views of the buffer.
fn split_folded(folded: &Tensor, cout: usize, rows: usize) -> Result<(Tensor, Tensor)> {
    let n = folded.dim(0)? - cout;
    Ok((
        folded.narrow(0, 0, n)?.reshape((rows, n / rows))?,
        folded.narrow(0, n, cout)?,
    ))
}

/// A folded Conv2d_BN (groups = 1). A 1x1 one is a Linear over the channels.
#[derive(Debug, Clone)]
pub struct ConvBn {
    folded: Derived,
    cout: usize,
    kernel: usize,
}

impl ConvBn {
    fn load(p: &Params, cin: usize, cout: usize, kernel: usize) -> Result<Self> {
        Ok(Self {
            folded: conv_bn(p, cout, cin, kernel)?,
            cout,
            kernel,
        })
    }

    fn linear(&self) -> Result<Linear> {
        let (weight, bias) = split_folded(&self.folded.get()?, self.cout, self.cout)?;
        Ok(Linear {
            weight,
            bias: Some(bias),
        })
    }

    /// A 1x1 conv on a channels-last map (B, H, W, Cin) -> (B, H, W, Cout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear()?.forward(x)
    }

    /// act(1x1 conv of x [+ residual]), fused into one pass when nothing needs a gradient.
    pub fn forward_act(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        act: Epilogue,
    ) -> Result<Tensor> {
        self.linear()?.forward_act(x, residual, act)
    }

    /// The k x k conv (padding k / 2) on an NCHW map.
    pub fn forward_nchw(&self, x: &Tensor, stride: usize) -> Result<Tensor> {
        let (weight, bias) = split_folded(&self.folded.get()?, self.cout, self.cout)?;
        let (k, cout) = (self.kernel, self.cout);
        let weight = weight.reshape((cout, x.dim(1)?, k, k))?;
        let y = x.conv2d(&weight, k / 2, stride, 1, 1)?;
        y.broadcast_add(&bias.reshape((1, cout, 1, 1))?)
    }
}

/// A depthwise k x k Conv2d_BN (groups = channels) with padding k / 2.
#[derive(Debug, Clone)]
pub struct DepthwiseConvBn {
    /// Tap-major: (k * k, C) weights, then C biases.
    folded: Derived,
    channels: usize,
    geometry: DepthwiseGeometry,
}

impl DepthwiseConvBn {
    fn load(p: &Params, c: usize, kernel: usize, stride: usize) -> Result<Self> {
        Ok(Self {
            folded: folded_conv_bn(p, c, 1, kernel, true)?,
            channels: c,
            geometry: DepthwiseGeometry {
                kernel,
                stride,
                padding: kernel / 2,
            },
        })
    }

    /// (B, H, W, C) -> (B, Ho, Wo, C).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Epilogue::None)
    }

    /// The convolution followed by `act`.
    pub fn forward_act(&self, x: &Tensor, act: Epilogue) -> Result<Tensor> {
        let k = self.geometry.kernel;
        let (taps, bias) = split_folded(&self.folded.get()?, self.channels, k * k)?;
        let conv = DepthwiseConv {
            taps,
            bias,
            geometry: self.geometry,
        };
        conv.forward_act(x, act)
    }
}

/// Two Conv2d_BN with a GELU between: (B, 3, S, S) -> (B, G, G, C0).
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    conv1: ConvBn,
    conv2: ConvBn,
    stride: usize,
}

impl PatchEmbed {
    fn load(p: &Params, cin: usize, c0: usize, t: &TinyVitConfig) -> Result<Self> {
        let k = t.patch_embed_kernel;
        Ok(Self {
            conv1: ConvBn::load(&p.pp("seq.0"), cin, c0 / 2, k)?,
            conv2: ConvBn::load(&p.pp("seq.2"), c0 / 2, c0, k)?,
            stride: t.patch_embed_stride,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.conv1.kernel == 1 && self.stride == 1 {
            let x = to_channels_last(x)?.contiguous()?;
            let h = self.conv1.forward_act(&x, None, Epilogue::Gelu)?;
            return self.conv2.forward(&h);
        }
        let x = gelu(&self.conv1.forward_nchw(x, self.stride)?)?;
        to_channels_last(&self.conv2.forward_nchw(&x, self.stride)?)?.contiguous()
    }
}

/// Stage 0's inverted residual: 1x1 expand, depthwise 3x3, 1x1 project, residual, GELU.
#[derive(Debug, Clone)]
pub struct MbConv {
    conv1: ConvBn,
    conv2: DepthwiseConvBn,
    conv3: ConvBn,
}

impl MbConv {
    fn load(p: &Params, c: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            conv1: ConvBn::load(&p.pp("conv1"), c, hidden, 1)?,
            conv2: DepthwiseConvBn::load(&p.pp("conv2"), hidden, 3, 1)?,
            conv3: ConvBn::load(&p.pp("conv3"), hidden, c, 1)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward_act(x, None, Epilogue::Gelu)?;
        let h = self.conv2.forward_act(&h, Epilogue::Gelu)?;
        self.conv3.forward_act(&h, Some(x), Epilogue::Gelu)
    }
}

/// Between stages: 1x1, GELU, depthwise 3x3 (stride s), GELU, 1x1.
#[derive(Debug, Clone)]
pub struct PatchMerging {
    conv1: ConvBn,
    conv2: DepthwiseConvBn,
    conv3: ConvBn,
}

impl PatchMerging {
    fn load(p: &Params, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        Ok(Self {
            conv1: ConvBn::load(&p.pp("conv1"), cin, cout, 1)?,
            conv2: DepthwiseConvBn::load(&p.pp("conv2"), cout, 3, stride)?,
            conv3: ConvBn::load(&p.pp("conv3"), cout, cout, 1)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward_act(x, None, Epilogue::Gelu)?;
        let h = self.conv2.forward_act(&h, Epilogue::Gelu)?;
        self.conv3.forward(&h)
    }
}

/// TinyViT attention over a grid of tokens: its own LayerNorm first, qkv laid out per head
/// as [q, k, v], and a learned bias per head and per offset (|dy|, |dx|) of the window.
#[derive(Debug, Clone)]
pub struct TinyVitAttention {
    pub norm: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    pub lora: Option<Lora>,
    /// (heads, ws * ws): the bias of offset (dy, dx) is column dy * ws + dx.
    pub biases: Tensor,
    pub num_heads: usize,
    pub window: usize,
}

/// The (heads, N, N) bias of a gh x gw token grid from a window's per-offset table.
fn offset_bias(biases: &Tensor, ws: usize, (gh, gw): (usize, usize)) -> Result<Tensor> {
    let n = gh * gw;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let dy = (i / gw).abs_diff(j / gw);
            let dx = (i % gw).abs_diff(j % gw);
            idx.push((dy * ws + dx) as u32);
        }
    }
    let idx = Tensor::from_vec(idx, n * n, biases.device())?;
    biases
        .index_select(&idx, 1)?
        .reshape((biases.dim(0)?, n, n))
}

impl TinyVitAttention {
    fn load(p: &Params, dim: usize, heads: usize, window: usize) -> Result<Self> {
        let biases = p.get("attention_biases", &[heads, window * window])?;
        if p.has("attention_bias_idxs") {
            let n = window * window;
            p.buffer("attention_bias_idxs", &[n, n])?;
        }
        Ok(Self {
            norm: LayerNorm::load(&p.pp("norm"), dim, LN_EPS)?,
            qkv: Linear::load(&p.pp("qkv"), dim, 3 * dim, true)?,
            proj: Linear::load(&p.pp("proj"), dim, dim, true)?,
            lora: None,
            biases,
            num_heads: heads,
            window,
        })
    }

    /// (heads, N, N) biases of a gh x gw token grid (both at most the window).
    pub fn grid_bias(&self, grid: (usize, usize)) -> Result<Tensor> {
        offset_bias(&self.biases, self.window, grid)
    }

    /// The qkv projection (with LoRA) of normalised tokens (.., C) -> (.., 3C).
    pub fn qkv_of(&self, xn: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(xn)?;
        match &self.lora {
            Some(l) => qkv + l.forward(xn)?,
            None => Ok(qkv),
        }
    }

    /// softmax(scale q kᵀ + bias) v per head: qkv (B, N, 3C) of N tokens that form a
    /// gh x gw grid -> (B, N, C), before the output projection.
    pub fn attend(&self, qkv: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let attention = BiasedAttention {
            num_heads: self.num_heads,
        };
        attention.forward(qkv, &self.grid_bias(grid)?)
    }

    /// x (B, N, C), the N tokens a gh x gw grid -> (B, N, C).
    pub fn forward(&self, x: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let qkv = self.qkv_of(&self.norm.forward(x)?)?;
        self.proj.forward(&self.attend(&qkv, grid)?)
    }
}

/// One TinyViT attention block, with the MSA adapters of MSA-SPEC 2.6:
/// ```text
/// a = SpaceAdapter(window attention of x) [+ DepthAdapter(depth attention of x)]
/// x = local_conv(x + a)
/// x = x + Mlp(x) + s * MLPAdapter(LayerNorm_mlp(x))
/// ```
#[derive(Debug, Clone)]
pub struct TinyVitBlock {
    pub attn: TinyVitAttention,
    pub local_conv: DepthwiseConvBn,
    /// The MLP's own LayerNorm, then Linear, GELU, Linear.
    pub mlp_norm: LayerNorm,
    pub mlp: FeedForward,
    pub window: usize,
    pub adapters: BlockAdapters,
}

impl TinyVitBlock {
    fn load(p: &Params, t: &TinyVitConfig, stage: usize, ad: &AdapterConfig) -> Result<Self> {
        let dim = t.embed_dims[stage];
        let window = t.window_sizes[stage];
        let mut attn = TinyVitAttention::load(&p.pp("attn"), dim, t.num_heads[stage], window)?;
        if ad.lora_rank > 0 {
            attn.lora = Some(Lora::load(&p.pp("attn"), dim, 3 * dim, ad.lora_rank)?);
        }
        let mlp_dim = t.mlp_dim(stage);
        Ok(Self {
            attn,
            local_conv: DepthwiseConvBn::load(&p.pp("local_conv"), dim, t.local_conv_size, 1)?,
            mlp_norm: LayerNorm::load(&p.pp("mlp.norm"), dim, LN_EPS)?,
            mlp: FeedForward {
                fc1: Linear::load(&p.pp("mlp.fc1"), dim, mlp_dim, true)?,
                fc2: Linear::load(&p.pp("mlp.fc2"), mlp_dim, dim, true)?,
                act: Activation::Gelu,
            },
            window,
            adapters: BlockAdapters::load(p, dim, ad)?,
        })
    }

    /// Attention inside ws x ws windows of x (B, H, W, C), the grid zero-padded bottom/right
    /// before the attention's own LayerNorm, as TinyViT does. A padding token normalises to
    /// the LayerNorm's bias, so the norm and the projections run on image tokens only and
    /// the windows are padded with that token's qkv.
    pub fn window_attention(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, c) = x.dims4()?;
        let ws = self.window;
        let attn = &self.attn;
        let qkv = attn.qkv_of(&attn.norm.forward(x)?)?;
        let pad_qkv = attn
            .qkv_of(&attn.norm.bias.reshape((1, c))?)?
            .reshape(3 * c)?;
        let (windows, padded) = window_partition_filled(&qkv, ws, &pad_qkv)?;
        let nw = windows.dim(0)?;
        let o = attn
            .attend(&windows.reshape((nw, ws * ws, 3 * c))?, (ws, ws))?
            .reshape((nw, ws, ws, c))?;
        attn.proj
            .forward(&window_unpartition(&o, ws, padded, (h, w))?)
    }

    /// Attention across the D slices at each spatial position, the slices a dh x dw grid
    /// under the window's offset biases; x (volumes * D, H, W, C).
    pub fn depth_attention(&self, x: &Tensor, d: usize) -> Result<Tensor> {
        let (dh, dw) = closest_factors(d);
        if dh > self.window || dw > self.window {
            candle_core::bail!(
                "a depth of {d} slices ({dh} x {dw}) does not fit the {0} x {0} attention window",
                self.window
            );
        }
        let xd = slices_to_depth_tokens(x, d)?;
        let a = self.attn.forward(&xd, (dh, dw))?;
        depth_tokens_to_slices(&a, x.dims4()?)
    }

    pub fn forward(&self, x: &Tensor, depth: Option<usize>) -> Result<Tensor> {
        let a = self.window_attention(x)?;
        let a = self
            .adapters
            .attention_branch(a, depth, |d| self.depth_attention(x, d))?;
        let x = self.local_conv.forward(&(x + a)?)?;
        let h = self.mlp_norm.forward(&x)?;
        let x = self.mlp.residual(&x, &h)?;
        self.adapters.beside_mlp(x, &h)
    }
}

/// A stage: MBConv blocks (stage 0) or TinyViT blocks, then a merge unless it is the last.
#[derive(Debug, Clone)]
pub enum Stage {
    Conv(Vec<MbConv>),
    Attention(Vec<TinyVitBlock>),
}

#[derive(Debug, Clone)]
pub struct TinyVitEncoder {
    pub patch_embed: PatchEmbed,
    pub stages: Vec<Stage>,
    pub merges: Vec<PatchMerging>,
    pub neck: Neck,
}

impl TinyVitEncoder {
    pub fn load(
        p: &Params,
        cfg: &SamConfig,
        t: &TinyVitConfig,
        ad: &AdapterConfig,
    ) -> Result<Self> {
        let dims = &t.embed_dims;
        let mut stages = vec![];
        let mut merges = vec![];
        for (i, &depth) in t.depths.iter().enumerate() {
            let lp = p.pp(&format!("layers.{i}"));
            stages.push(if i == 0 {
                let hidden = t.mbconv_dim();
                let blocks = (0..depth)
                    .map(|j| MbConv::load(&lp.pp(&format!("blocks.{j}")), dims[0], hidden))
                    .collect::<Result<_>>()?;
                Stage::Conv(blocks)
            } else {
                let blocks = (0..depth)
                    .map(|j| TinyVitBlock::load(&lp.pp(&format!("blocks.{j}")), t, i, ad))
                    .collect::<Result<_>>()?;
                Stage::Attention(blocks)
            });
            if i + 1 < dims.len() {
                let merge = lp.pp("downsample");
                merges.push(PatchMerging::load(
                    &merge,
                    dims[i],
                    dims[i + 1],
                    t.merge_strides[i],
                )?);
            }
        }
        let last = *dims.last().unwrap_or(&0);
        Ok(Self {
            patch_embed: PatchEmbed::load(&p.pp("patch_embed"), cfg.in_chans, dims[0], t)?,
            stages,
            merges,
            neck: Neck::load(&p.pp("neck"), last, cfg.prompt_embed_dim)?,
        })
    }

    /// (B, 3, S, S) -> (B, 256, G, G); with `depth` the adapted blocks' depth branch runs.
    /// With `recompute`, each attention block is recomputed in the backward pass (the
    /// convolution stage has no adapters, so nothing before it trains).
    pub fn forward(
        &self,
        x: &Tensor,
        depth: Option<usize>,
        recompute: Option<&Arc<Recompute>>,
    ) -> Result<Tensor> {
        use crate::runtime::memory::trace;
        let dev = x.device().clone();
        let mut x = self.patch_embed.forward(x)?;
        trace(&dev, || "tiny_vit patch_embed".into());
        for (i, stage) in self.stages.iter().enumerate() {
            x = match stage {
                Stage::Conv(blocks) => blocks.iter().try_fold(x, |x, b| b.forward(&x))?,
                Stage::Attention(blocks) => {
                    blocks.iter().enumerate().try_fold(x, |x, (j, b)| {
                        let y = run_block(recompute, &x, b, move |b, x| b.forward(x, depth))?;
                        trace(&dev, || format!("tiny_vit stage {i} block {j}"));
                        Ok::<_, candle_core::Error>(y)
                    })?
                }
            };
            trace(&dev, || format!("tiny_vit stage {i}"));
            if let Some(m) = self.merges.get(i) {
                x = m.forward(&x)?;
                trace(&dev, || format!("tiny_vit merge {i}"));
            }
        }
        let out = self.neck.forward(&x)?;
        trace(&dev, || "tiny_vit neck".into());
        Ok(out)
    }

    /// Every TinyViT attention block, stage by stage.
    pub fn blocks(&self) -> impl Iterator<Item = &TinyVitBlock> {
        self.stages.iter().flat_map(|s| match s {
            Stage::Attention(b) => b.as_slice(),
            Stage::Conv(_) => &[],
        })
    }
}
