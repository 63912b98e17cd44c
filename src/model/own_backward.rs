//! Layers with a backward pass of their own, written in candle's ops so that it runs on any
//! device: frozen layers, which give their input a gradient and nothing else, and the
//! adapters' layers. They serve where the CPU's f32 kernels do not: on GPUs, and on the CPU
//! in other dtypes.
//!
//! candle's autograd computes a gradient for every operand of an op, frozen or not. The
//! gradient of a frozen operand is never consumed, and the gradient store keeps it until the
//! step ends. So every frozen bias or LayerNorm weight broadcast over a map leaves a
//! gradient the size of the map behind, and every frozen Linear costs one more matrix
//! product for its weight gradient. The composed forward also keeps its intermediates (a
//! LayerNorm's centred input and its scaled copy, a softmax's exponentials) for a backward
//! pass that needs only the input.
//!
//! Here the forward pass runs outside the graph, and `kernels::backward_op` attaches its
//! result to the input with the formula's backward pass.

use crate::kernels::backward_op::{with_backward, with_backward3};
use crate::kernels::fused_backward;
use candle_core::{DType, Result, Tensor, D};

/// x Wᵀ + b over the last dim, all leading dims folded into one matrix product.
pub fn affine(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / in_dim.max(1);
    let y = x
        .contiguous()?
        .reshape((rows, in_dim))?
        .matmul(&weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = weight.dim(0)?;
    }
    y.reshape(out)
}

/// dx = dy W for y = x Wᵀ + b: one matrix product instead of two and a bias reduction.
fn affine_input_grad(dy: &Tensor, weight: &Tensor, x_dims: &[usize]) -> Result<Tensor> {
    let out_dim = weight.dim(0)?;
    let rows = dy.elem_count() / out_dim.max(1);
    dy.contiguous()?
        .reshape((rows, out_dim))?
        .matmul(weight)?
        .reshape(x_dims)
}

/// A Linear whose weight and bias are frozen, on an input that needs a gradient.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = affine(&x.detach(), weight, bias)?;
    let w = weight.clone();
    with_backward(x, y, "msa-frozen-linear", move |x, _, dy| {
        affine_input_grad(dy, &w, x.dims())
    })
}

/// The activation between a frozen MLP's two layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    Relu,
}

impl Activation {
    fn apply(self, z: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => z.gelu_erf(),
            Activation::Relu => z.relu(),
        }
    }

    /// dz = dh act'(z), in z's dtype (`kernels::fused_backward`).
    fn backward(self, z: &Tensor, dh: &Tensor) -> Result<Tensor> {
        let dh = dh.to_dtype(z.dtype())?;
        fused_backward::activation(z, &dh, self == Activation::Gelu)
    }
}

/// fc2(act(fc1(x))) with both layers frozen, on an input that needs a gradient. The step
/// keeps x alone; the backward pass recomputes fc1 (one matrix product) and skips both
/// weight gradients.
pub fn mlp(
    x: &Tensor,
    (w1, b1): (&Tensor, Option<&Tensor>),
    (w2, b2): (&Tensor, Option<&Tensor>),
    act: Activation,
) -> Result<Tensor> {
    let y = affine(&act.apply(&affine(&x.detach(), w1, b1)?)?, w2, b2)?;
    let (w1, b1, w2) = (w1.clone(), b1.cloned(), w2.clone());
    with_backward(x, y, "msa-frozen-mlp", move |x, _, dy| {
        let z = affine(x, &w1, b1.as_ref())?;
        let dh = affine_input_grad(dy, &w2, z.dims())?;
        affine_input_grad(&act.backward(&z, &dh)?, &w1, x.dims())
    })
}

/// LayerNorm over the last dim with a frozen weight and bias, on an input that needs a
/// gradient: candle's fused kernel forward, keeping the input alone; the backward pass
/// (`kernels::fused_backward`) recomputes the statistics.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let y = layer_norm_forward(&x.detach().contiguous()?, weight, bias, eps)?;
    let w = weight.clone();
    with_backward(x, y, "msa-frozen-layer-norm", move |x, _, dy| {
        fused_backward::layer_norm(x, &w.to_dtype(x.dtype())?, dy, eps)
    })
}

/// candle's fused kernel where it has one for the dtype (not f64), else composed ops.
pub(crate) fn layer_norm_forward(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if x.dtype() != DType::F64 {
        return candle_nn::ops::layer_norm(x, weight, bias, eps as f32);
    }
    layer_norm_ops(x, weight, bias, eps)
}

/// LayerNorm over the last dim in candle's composed ops (differentiable in every operand).
pub(crate) fn layer_norm_ops(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Softmax over the last dim on an input that needs a gradient: candle's fused kernel
/// forward; dx = y (dy - Σ dy y) (`kernels::fused_backward`).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let y = candle_nn::ops::softmax_last_dim(&x.detach().contiguous()?)?;
    with_backward(x, y, "msa-frozen-softmax", |_, y, dy| {
        fused_backward::softmax(y, &dy.to_dtype(y.dtype())?)
    })
}

/// A trainable layer of an adapter: `scale * act(x Wᵀ + b)` computed in W's dtype (f32)
/// whatever x's, the result in `out_dtype`. The step keeps x alone (not the f32 copy, the
/// product or the activation): the backward pass recomputes the product when there is an
/// activation.
pub fn adapter_linear(
    x: &Tensor,
    (w, b): (&Tensor, &Tensor),
    act: Option<Activation>,
    out_dtype: DType,
    scale: f64,
) -> Result<Tensor> {
    let wd = w.dtype();
    let z = affine(&x.detach().to_dtype(wd)?, w, Some(b))?;
    let h = match act {
        Some(a) => a.apply(&z)?,
        None => z,
    };
    let y = (h * scale)?.to_dtype(out_dtype)?;
    with_backward3(
        (x, w, b),
        y,
        "msa-adapter-linear",
        move |[(x, x_trains), (w, w_trains), (b, b_trains)], dy| {
            let xw = x.to_dtype(wd)?;
            let mut g = (dy.to_dtype(wd)? * scale)?;
            if let Some(a) = act {
                g = a.backward(&affine(&xw, w, Some(b))?, &g)?;
            }
            let (out_dim, in_dim) = w.dims2()?;
            let rows = g.elem_count() / out_dim.max(1);
            let g2 = g.reshape((rows, out_dim))?;
            let dx = x_trains
                .then(|| affine_input_grad(&g, w, x.dims())?.to_dtype(x.dtype()))
                .transpose()?;
            let dw = w_trains
                .then(|| g2.t()?.matmul(&xw.reshape((rows, in_dim))?))
                .transpose()?;
            let db = b_trains.then(|| g2.sum(0)).transpose()?;
            Ok([dx, dw, db])
        },
    )
}
