//! The Medical SAM Adapter pieces: bottleneck `Adapter`s in the encoder blocks and the
//! decoder layers, the prompt-conditioned Hyper-Prompting Adapter (HyP-Adpt), and LoRA.

use super::nn::{gelu, is_cpu_f32, needs_grad, LayerNorm, Linear};
use super::own_backward::{adapter_linear, Activation};
use super::precision::in_f32;
use crate::params::{Init, Params};
use candle_core::{Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// How adapter up-projections start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AdapterInit {
    /// Up-projections at zero: the untrained adapted model computes exactly frozen SAM.
    #[default]
    Zero,
    /// PyTorch's default Linear init everywhere, as the PyTorch MSA code does.
    Torch,
}

/// Which adapters a model carries, and their settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdapterConfig {
    /// Space and MLP adapters in every encoder block.
    pub encoder: bool,
    /// Depth adapters (3D branch) in every encoder block.
    pub depth: bool,
    /// Slices per chunk that the depth branch attends across (MSA-SPEC 2.2); volumes are
    /// encoded this many consecutive slices at a time when `depth` is on.
    pub depth_chunk: usize,
    /// HyP-Adpt, MLP and image adapters in every two-way transformer layer.
    pub decoder: bool,
    /// LoRA rank on every encoder block's qkv; 0 for none.
    pub lora_rank: usize,
    /// Bottleneck width as a fraction of the model width.
    pub ratio: f64,
    /// Scale of the MLP adapters' output (s).
    pub mlp_scale: f64,
    pub init: AdapterInit,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            encoder: true,
            depth: false,
            depth_chunk: 8,
            decoder: true,
            lora_rank: 0,
            ratio: 0.25,
            mlp_scale: 0.5,
            init: AdapterInit::Zero,
        }
    }
}

impl AdapterConfig {
    /// No adapters at all: plain SAM.
    pub fn none() -> Self {
        Self {
            encoder: false,
            depth: false,
            decoder: false,
            lora_rank: 0,
            ..Self::default()
        }
    }

    pub fn any(&self) -> bool {
        self.encoder || self.depth || self.decoder || self.lora_rank > 0
    }

    /// The bottleneck width of an adapter on a `dim`-wide block: the ratio rounded down, at
    /// least 1.
    pub fn bottleneck(&self, dim: usize) -> usize {
        (((dim as f64) * self.ratio) as usize).max(1)
    }

    fn up_init(&self, fan_in: usize) -> Init {
        match self.init {
            AdapterInit::Zero => Init::Zeros,
            AdapterInit::Torch => Init::Uniform { fan_in },
        }
    }
}

fn trainable_linear(
    p: &Params,
    din: usize,
    dout: usize,
    init: Init,
    bias_init: Init,
) -> Result<Linear> {
    Ok(Linear {
        weight: p.trainable("weight", &[dout, din], init)?,
        bias: Some(p.trainable("bias", &[dout], bias_init)?),
    })
}

/// fc2(GELU(fc1(x))), plus x when it has a skip connection.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub fc1: Linear,
    pub fc2: Linear,
    pub skip: bool,
}

impl Adapter {
    pub fn load(p: &Params, dim: usize, cfg: &AdapterConfig, skip: bool) -> Result<Self> {
        let hidden = cfg.bottleneck(dim);
        let down = Init::Uniform { fan_in: dim };
        let up = cfg.up_init(hidden);
        Ok(Self {
            fc1: trainable_linear(&p.pp("D_fc1"), dim, hidden, down, down)?,
            fc2: trainable_linear(&p.pp("D_fc2"), hidden, dim, up, up)?,
            skip,
        })
    }

    /// In f32 whatever the encoder's precision (see `precision`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_scaled(x, 1.0)
    }

    /// `scale * forward(x)`.
    pub fn forward_scaled(&self, x: &Tensor, scale: f64) -> Result<Tensor> {
        if let Some(y) = self.own_backward(x, scale)? {
            return Ok(y);
        }
        let y = self.forward_composed(x)?;
        match scale == 1.0 {
            true => Ok(y),
            false => y * scale,
        }
    }

    /// Off the CPU's f32 kernels, in training: two layers of `own_backward::adapter_linear`,
    /// the first from the encoder's dtype to f32, the second back, so that the step keeps
    /// neither an f32 copy of the input nor the layers' intermediates.
    fn own_backward(&self, x: &Tensor, scale: f64) -> Result<Option<Tensor>> {
        let (Some(b1), Some(b2)) = (&self.fc1.bias, &self.fc2.bias) else {
            return Ok(None);
        };
        if is_cpu_f32(x) || !(needs_grad(&[x]) || self.fc1.trains() || self.fc2.trains()) {
            return Ok(None);
        }
        let f32 = self.fc1.weight.dtype();
        let h = adapter_linear(x, (&self.fc1.weight, b1), Some(Activation::Gelu), f32, 1.0)?;
        if !self.skip {
            return adapter_linear(&h, (&self.fc2.weight, b2), None, x.dtype(), scale).map(Some);
        }
        let y = adapter_linear(&h, (&self.fc2.weight, b2), None, x.dtype(), 1.0)?;
        let y = (x + y)?;
        match scale == 1.0 {
            true => Ok(Some(y)),
            false => (y * scale).map(Some),
        }
    }

    fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        in_f32(x, |x| {
            let y = self.fc2.forward(&gelu(&self.fc1.forward(x)?)?)?;
            if self.skip {
                x + y
            } else {
                Ok(y)
            }
        })
    }
}

/// The MSA adapters of one encoder block (MSA-SPEC 2.1, 2.2, 2.6), ViT or TinyViT alike.
#[derive(Debug, Clone)]
pub struct BlockAdapters {
    /// With skip, on the attention output.
    pub space: Option<Adapter>,
    /// Without skip, beside the MLP, scaled by `mlp_scale`.
    pub mlp: Option<Adapter>,
    /// Without skip, on the depth-attention output (3D).
    pub depth: Option<Adapter>,
    pub mlp_scale: f64,
}

impl BlockAdapters {
    pub fn load(p: &Params, dim: usize, cfg: &AdapterConfig) -> Result<Self> {
        let adapter = |on: bool, name: &str, skip: bool| -> Result<Option<Adapter>> {
            on.then(|| Adapter::load(&p.pp(name), dim, cfg, skip))
                .transpose()
        };
        Ok(Self {
            space: adapter(cfg.encoder, "Space_Adapter", true)?,
            mlp: adapter(cfg.encoder, "MLP_Adapter", false)?,
            depth: adapter(cfg.depth, "Depth_Adapter", false)?,
            mlp_scale: cfg.mlp_scale,
        })
    }

    /// The attention branch: `a` through the Space adapter, plus the Depth adapter of the
    /// depth attention (computed by `depth_attention(D)`) when the batch is D-slice chunks.
    pub fn attention_branch(
        &self,
        a: Tensor,
        depth: Option<usize>,
        depth_attention: impl FnOnce(usize) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let a = match &self.space {
            Some(sa) => sa.forward(&a)?,
            None => a,
        };
        match (depth, &self.depth) {
            (Some(d), Some(da)) => a + da.forward(&depth_attention(d)?)?,
            _ => Ok(a),
        }
    }

    /// `x` plus the MLP adapter of the normalised input `h`, scaled.
    pub fn beside_mlp(&self, x: Tensor, h: &Tensor) -> Result<Tensor> {
        match &self.mlp {
            Some(ma) => x + ma.forward_scaled(h, self.mlp_scale)?,
            None => Ok(x),
        }
    }
}

/// HyP-Adpt: a bottleneck whose r x r middle weight is generated from the prompt.
#[derive(Debug, Clone)]
pub struct HyperAdapter {
    pub down: Linear,
    pub hyper1: Linear,
    pub hyper2: Linear,
    pub norm: LayerNorm,
    pub up: Linear,
    pub rank: usize,
}

impl HyperAdapter {
    pub fn load(p: &Params, dim: usize, cfg: &AdapterConfig) -> Result<Self> {
        let r = cfg.bottleneck(dim);
        let u = |fan_in| Init::Uniform { fan_in };
        Ok(Self {
            down: trainable_linear(&p.pp("D_fc1"), dim, r, u(dim), u(dim))?,
            hyper1: trainable_linear(&p.pp("hyper.0"), dim, dim, u(dim), u(dim))?,
            hyper2: trainable_linear(&p.pp("hyper.2"), dim, r * r, u(dim), u(dim))?,
            norm: LayerNorm {
                weight: p.trainable("norm.weight", &[r], Init::Ones)?,
                bias: p.trainable("norm.bias", &[r], Init::Zeros)?,
                eps: 1e-5,
            },
            up: trainable_linear(&p.pp("D_fc2"), r, dim, cfg.up_init(r), cfg.up_init(r))?,
            rank: r,
        })
    }

    /// x (B, T, D) tokens, prompt (B, D) mean prompt embedding -> x + Up(ReLU(LN(Down(x) W_p))).
    pub fn forward(&self, x: &Tensor, prompt: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let w = self
            .hyper2
            .forward(&self.hyper1.forward(prompt)?.relu()?)?
            .reshape((b, self.rank, self.rank))?;
        let e = self.down.forward(x)?.matmul(&w)?;
        let e = self.norm.forward(&e)?.relu()?;
        x + self.up.forward(&e)?
    }
}

/// The mean of the sparse prompt tokens (B, N, D) -> (B, D); zeros when there are none.
pub fn mean_prompt(sparse: &Tensor) -> Result<Tensor> {
    let (b, n, d) = sparse.dims3()?;
    if n == 0 {
        return Tensor::zeros((b, d), sparse.dtype(), sparse.device());
    }
    sparse.mean(D::Minus2)
}

/// Low-rank update of a frozen projection: x Aᵀ Bᵀ, B starting at zero.
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
}

impl Lora {
    pub fn load(p: &Params, din: usize, dout: usize, rank: usize) -> Result<Self> {
        Ok(Self {
            a: p.trainable("lora_a", &[rank, din], Init::Uniform { fan_in: din })?,
            b: p.trainable("lora_b", &[dout, rank], Init::Zeros)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let down = Linear {
            weight: self.a.clone(),
            bias: None,
        };
        let up = Linear {
            weight: self.b.clone(),
            bias: None,
        };
        in_f32(x, |x| up.forward(&down.forward(x)?))
    }
}
