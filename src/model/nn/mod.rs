//! The layers SAM's three parts are made of. A layer decides which backend computes it:
//! on the CPU in f32 our own kernels (`kernels`), for inference and training alike; where
//! a gradient is needed elsewhere (GPUs, other dtypes), one op with its own backward pass
//! for frozen weights (`own_backward`); candle's composed ops otherwise. The model files
//! call the layers and read like MSA-SPEC.

mod attention;
mod conv;
mod feed_forward;

pub use attention::{BiasedAttention, MultiHeadAttention};
pub use conv::{Conv3x3, DepthwiseConv};
pub use feed_forward::FeedForward;

use super::own_backward;
use crate::kernels::{with_opt_slice, with_slice};
use crate::params::Params;
use candle_core::{DType, Result, Tensor};

/// y = x Wᵀ + b over the last dim, with all leading dims folded into one matmul.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(p: &Params, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = p.get("weight", &[out_dim, in_dim])?;
        let bias = if bias {
            Some(p.get("bias", &[out_dim])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.is_frozen_cpu(x) {
            let op = crate::kernels::linear::FrozenLinear {
                weight: self.weight.contiguous()?,
                bias: self.bias.as_ref().map(|b| b.contiguous()).transpose()?,
            };
            return x.contiguous()?.apply_op1(op);
        }
        if is_cpu_f32(x) && x.rank() >= 1 {
            let bias = match &self.bias {
                Some(b) => b.contiguous()?,
                None => Tensor::zeros(self.out_dim(), DType::F32, x.device())?,
            };
            return x.contiguous()?.apply_op3(
                &self.weight.contiguous()?,
                &bias,
                crate::kernels::linear::TrainableLinear,
            );
        }
        if needs_grad(&[x]) && !self.trains() {
            return own_backward::linear(x, &self.weight, self.bias.as_ref());
        }
        own_backward::affine(x, &self.weight, self.bias.as_ref())
    }

    /// act(x Wᵀ + b [+ residual]). When nothing needs a gradient on the CPU it is one
    /// pass; otherwise the same maths as graph ops.
    pub fn forward_act(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        act: crate::kernels::linear::Epilogue,
    ) -> Result<Tensor> {
        use crate::kernels::linear::{affine_rows, Epilogue};
        let mut ts = vec![x, &self.weight];
        ts.extend(self.bias.iter());
        ts.extend(residual);
        if is_cpu_f32(x) && x.rank() >= 1 && !needs_grad(&ts) {
            let (out_dim, in_dim) = self.weight.dims2()?;
            if x.dims().last() != Some(&in_dim) {
                candle_core::bail!("linear: input {:?} does not end in {in_dim}", x.dims());
            }
            let x = x.contiguous()?;
            let (w, b) = (
                self.weight.contiguous()?,
                self.bias.as_ref().map(|b| b.contiguous()).transpose()?,
            );
            let r = residual.map(|r| r.contiguous()).transpose()?;
            if let Some(r) = &r {
                if r.elem_count() != x.elem_count() / in_dim.max(1) * out_dim {
                    candle_core::bail!(
                        "residual {:?} does not fit output of {:?} x {out_dim}",
                        r.dims(),
                        x.dims()
                    );
                }
            }
            let y = with_slice(&x, |xs| {
                with_slice(&w, |ws| {
                    with_opt_slice(b.as_ref(), |b| {
                        with_opt_slice(r.as_ref(), |r| {
                            Ok(affine_rows(xs, ws, b, r, (out_dim, in_dim), act))
                        })
                    })
                })
            })?;
            let mut dims = x.dims().to_vec();
            let last = dims.len() - 1;
            dims[last] = out_dim;
            return Tensor::from_vec(y, dims, x.device());
        }
        let mut y = self.forward(x)?;
        if let Some(r) = residual {
            y = (y + r)?;
        }
        match act {
            Epilogue::Gelu => gelu(&y),
            Epilogue::None => Ok(y),
        }
    }

    /// Frozen weights on the CPU take the custom op: no weight gradient is ever computed.
    fn is_frozen_cpu(&self, x: &Tensor) -> bool {
        is_cpu_f32(x) && !self.trains() && x.rank() >= 2
    }

    /// Whether the weight or the bias needs a gradient.
    pub fn trains(&self) -> bool {
        let mut ts = vec![&self.weight];
        ts.extend(self.bias.iter());
        needs_grad(&ts)
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// LayerNorm over the last dim.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(p: &Params, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: p.get("weight", &[dim])?,
            bias: p.get("bias", &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if is_cpu_f32(x) {
            use crate::kernels::layer_norm::{FrozenLayerNorm, TrainableLayerNorm};
            let (w, b) = (&self.weight, &self.bias);
            if !needs_grad(&[w, b]) && needs_grad(&[x]) {
                let op = FrozenLayerNorm {
                    weight: w.to_vec1::<f32>()?,
                    bias: b.to_vec1::<f32>()?,
                    eps: self.eps,
                };
                return x.contiguous()?.apply_op1(op);
            }
            if needs_grad(&[w, b]) && w.is_contiguous() && b.is_contiguous() {
                let op = TrainableLayerNorm { eps: self.eps };
                return x.contiguous()?.apply_op3(w, b, op);
            }
        }
        let (w, b) = (&self.weight, &self.bias);
        if needs_grad(&[x]) && !needs_grad(&[w, b]) {
            return own_backward::layer_norm(x, w, b, self.eps);
        }
        if needs_grad(&[x, w, b]) {
            own_backward::layer_norm_ops(x, w, b, self.eps)
        } else {
            own_backward::layer_norm_forward(&x.contiguous()?, w, b, self.eps)
        }
    }
}

/// Softmax over the last dim.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        return x
            .contiguous()?
            .apply_op1(crate::kernels::softmax::SoftmaxLastDim);
    }
    if needs_grad(&[x]) {
        return own_backward::softmax(x);
    }
    candle_nn::ops::softmax_last_dim(&x.contiguous()?)
}

/// Where the hand-written CPU kernels apply.
pub(crate) fn is_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

pub fn needs_grad(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// GELU (erf form). On CPU a vectorised kernel, with its own backward when autograd tracks
/// the input; candle's per-element `erf` made the decoder's upscaling path a third of its time.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !is_cpu_f32(x) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(crate::kernels::gelu::Gelu)
}

type DeriveFn = dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync;

/// A tensor computed from parameters at load time (a folded BatchNorm, a permuted layout).
/// Frozen, it is computed once. When a parameter trains it is recomputed at every use, so
/// that the forward pass follows the optimizer's in-place updates and gradients reach the
/// parameters.
#[derive(Clone)]
pub struct Derived {
    inputs: Vec<Tensor>,
    f: std::sync::Arc<DeriveFn>,
    cached: Tensor,
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Derived({:?})", self.cached.shape())
    }
}

impl Derived {
    pub fn new(
        inputs: Vec<Tensor>,
        f: impl Fn(&[Tensor]) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Result<Self> {
        let cached = f(&inputs)?;
        Ok(Self {
            inputs,
            f: std::sync::Arc::new(f),
            cached,
        })
    }

    pub fn get(&self) -> Result<Tensor> {
        if needs_grad(&self.inputs.iter().collect::<Vec<_>>()) {
            (self.f)(&self.inputs)
        } else {
            Ok(self.cached.clone())
        }
    }
}

/// A stack of Linear layers with ReLU between them (SAM's `MLP`).
#[derive(Debug, Clone)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    pub fn load(p: &Params, dims: &[usize]) -> Result<Self> {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::load(&p.pp(&format!("layers.{i}")), w[0], w[1], true))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i < last {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// A convolution whose kernel equals its stride and has no padding, applied to a
/// channels-last map (B, H, W, Cin) -> (B, H/k, W/k, Cout): a patchify and one matmul.
#[derive(Debug, Clone)]
pub struct PatchConv {
    pub linear: Linear,
    pub kernel: usize,
}

impl PatchConv {
    pub fn load(p: &Params, cin: usize, cout: usize, kernel: usize) -> Result<Self> {
        let weight = p.get("weight", &[cout, cin, kernel, kernel])?;
        let bias = p.get("bias", &[cout])?;
        let weight = weight.reshape((cout, cin * kernel * kernel))?;
        Ok(Self {
            linear: Linear {
                weight,
                bias: Some(bias),
            },
            kernel,
        })
    }

    /// `x` is NCHW; the result is channels-last.
    pub fn forward_nchw(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let k = self.kernel;
        let (gh, gw) = (h / k, w / k);
        let patches = x
            .reshape((b, c, gh, k, gw, k))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh, gw, c * k * k))?;
        self.linear.forward(&patches)
    }
}

/// ConvTranspose2d with kernel 2 and stride 2 on channels-last maps: each input pixel
/// becomes a 2x2 block, so it is one Linear to 4*Cout values ordered (i, j, Cout) and a
/// pixel shuffle that moves contiguous runs of 2*Cout values.
#[derive(Debug, Clone)]
pub struct UpConv2x2 {
    /// The weight as (4*Cout, Cin) rows, ordered (i, j, Cout), then the 4*Cout biases.
    pub rows_bias: Derived,
    pub cout: usize,
}

impl UpConv2x2 {
    pub fn load(p: &Params, cin: usize, cout: usize) -> Result<Self> {
        let weight = p.get("weight", &[cin, cout, 2, 2])?;
        let bias = p.get("bias", &[cout])?;
        let rows_bias = Derived::new(vec![weight, bias], |t| {
            let [w, b] = t else {
                candle_core::bail!("UpConv2x2 takes a weight and a bias");
            };
            // PyTorch layout (Cin, Cout, 2, 2) -> (2, 2, Cout, Cin), flat, then the biases.
            let w = w.permute((2, 3, 1, 0))?.contiguous()?.flatten_all()?;
            Tensor::cat(&[w, b.repeat(4)?], 0)
        })?;
        Ok(Self { rows_bias, cout })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, crate::kernels::linear::Epilogue::None)
    }

    /// The transposed conv followed by `act`: one fused matmul pass and one shuffle copy
    /// when nothing needs a gradient, graph ops otherwise.
    pub fn forward_act(&self, x: &Tensor, act: crate::kernels::linear::Epilogue) -> Result<Tensor> {
        let (b, h, w, cin) = x.dims4()?;
        let rb = self.rows_bias.get()?;
        let out4 = 4 * self.cout;
        let linear = Linear {
            weight: rb.narrow(0, 0, out4 * cin)?.reshape((out4, cin))?,
            bias: Some(rb.narrow(0, out4 * cin, out4)?),
        };
        let y = linear.forward_act(x, None, act)?;
        if is_cpu_f32(x) && !needs_grad(&[&y]) {
            return pixel_shuffle(&y, self.cout);
        }
        y.reshape((b, h, w, 2, 2 * self.cout))?
            .permute((0, 1, 3, 2, 4))?
            .contiguous()?
            .reshape((b, 2 * h, 2 * w, self.cout))
    }
}

/// (B, H, W, 4*C) with channels ordered (i, j, C) -> (B, 2H, 2W, C), pixel (2y+i, 2x+j).
fn pixel_shuffle(y: &Tensor, c: usize) -> Result<Tensor> {
    let (b, h, w, _) = y.dims4()?;
    let out = with_slice(y, |src| {
        Ok(crate::kernels::par_filled(
            b * 4 * h * w * c,
            2 * w * c,
            |r, dst| {
                let (bi, oy) = (r / (2 * h), r % (2 * h));
                let (iy, i) = (oy / 2, oy % 2);
                for x in 0..w {
                    let s = ((bi * h + iy) * w + x) * 4 * c + i * 2 * c;
                    dst[2 * x * c..2 * (x + 1) * c].copy_from_slice(&src[s..s + 2 * c]);
                }
            },
        ))
    })?;
    Tensor::from_vec(out, (b, 2 * h, 2 * w, c), y.device())
}

/// NCHW -> NHWC and back.
pub fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 2, 3, 1))
}

pub fn to_channels_first(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 3, 1, 2))
}
