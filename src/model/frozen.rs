//! Frozen layers with a backward pass of their own, for the input alone, written in candle's
//! ops so that it runs on any device. They serve where the CPU's f32 kernels do not: on
//! GPUs, and on the CPU in other dtypes.
//!
//! candle's autograd computes a gradient for every operand of an op, frozen or not. The
//! gradient of a frozen operand is never consumed, and the gradient store keeps it until the
//! step ends. So every frozen bias or LayerNorm weight broadcast over a map leaves a
//! gradient the size of the map behind, and every frozen Linear costs one more matrix
//! product for its weight gradient. The composed forward also keeps its intermediates (a
//! LayerNorm's centred input and its scaled copy, a softmax's exponentials) for a backward
//! pass that needs only the input.
//!
//! Here the forward pass runs outside the graph. A custom op attaches its result to the
//! input, and its backward pass computes the input gradient from the formula.

use candle_core::backend::BackendStorage;
use candle_core::{CustomOp1, DType, Layout, Result, Shape, Storage, Tensor, D};

type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

/// `y`, computed from `x` without a graph, attached to `x`'s graph with the backward pass
/// `dx = back(x, y, dy)` (all three detached).
pub fn with_backward<B>(x: &Tensor, y: Tensor, what: &'static str, back: B) -> Result<Tensor>
where
    B: Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    let y = if y.is_contiguous() && y.layout().start_offset() == 0 {
        y
    } else {
        y.copy()?
    };
    let back: Box<Backward> = Box::new(back);
    x.apply_op1(OwnBackward { y, what, back })
}

struct OwnBackward {
    /// Contiguous from offset 0, computed from the detached input.
    y: Tensor,
    what: &'static str,
    back: Box<Backward>,
}

impl CustomOp1 for OwnBackward {
    fn name(&self) -> &'static str {
        self.what
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        precomputed_result(&self.y, self.what, |s| match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        precomputed_result(&self.y, self.what, |s| match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = (self.back)(&x.detach(), &y.detach(), &grad.detach())?;
        if dx.dims() != x.dims() {
            candle_core::bail!(
                "{}: input gradient {:?} for an input {:?}",
                self.what,
                dx.dims(),
                x.dims()
            );
        }
        Ok(Some(dx))
    }
}

/// A copy of the storage of `out`, a fresh contiguous tensor, as an op's result on the
/// backend `pick` selects.
fn precomputed_result<S: BackendStorage>(
    out: &Tensor,
    what: &str,
    pick: impl Fn(&Storage) -> Option<&S>,
) -> Result<(S, Shape)> {
    let (storage, layout) = out.storage_and_layout();
    let Some(s) = pick(&storage) else {
        candle_core::bail!("{what}: output on another device than its input");
    };
    if layout.start_offset() != 0 || !layout.is_contiguous() {
        candle_core::bail!("{what}: output must be a fresh contiguous tensor");
    }
    Ok((s.try_clone(layout)?, out.shape().clone()))
}

/// The dtype a backward pass computes in: f32, or f64 for f64 inputs.
fn wide(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F64 => Ok(t.clone()),
        _ => t.to_dtype(DType::F32),
    }
}

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

    /// The derivative at z, in f32 (f64 for f64).
    fn derivative(self, z: &Tensor) -> Result<Tensor> {
        let z = wide(z)?;
        match self {
            // Φ(z) + z φ(z)
            Activation::Gelu => {
                let cdf = ((z.affine(std::f64::consts::FRAC_1_SQRT_2, 0.)?.erf()? + 1.)? * 0.5)?;
                let inv_sqrt_2pi = 0.5 * std::f64::consts::FRAC_2_SQRT_PI * 0.5f64.sqrt();
                let pdf = (z.sqr()?.affine(-0.5, 0.)?.exp()? * inv_sqrt_2pi)?;
                cdf + (z * pdf)?
            }
            Activation::Relu => z.gt(0.)?.to_dtype(z.dtype()),
        }
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
        let dz = (wide(&dh)? * act.derivative(&z)?)?.to_dtype(z.dtype())?;
        affine_input_grad(&dz, &w1, x.dims())
    })
}

/// LayerNorm over the last dim with a frozen weight and bias, on an input that needs a
/// gradient: candle's fused kernel forward, keeping the input alone; the backward pass
/// recomputes the statistics in f32 (f64 for f64).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let y = layer_norm_forward(&x.detach().contiguous()?, weight, bias, eps)?;
    let w = wide(weight)?;
    with_backward(x, y, "msa-frozen-layer-norm", move |x, _, dy| {
        let xw = wide(x)?;
        let xc = xw.broadcast_sub(&xw.mean_keepdim(D::Minus1)?)?;
        let rstd = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?
            .sqrt()?
            .recip()?;
        let xhat = xc.broadcast_mul(&rstd)?;
        let gw = wide(dy)?.broadcast_mul(&w)?;
        let mean_g = gw.mean_keepdim(D::Minus1)?;
        let mean_gx = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = gw
            .broadcast_sub(&mean_g)?
            .sub(&xhat.broadcast_mul(&mean_gx)?)?
            .broadcast_mul(&rstd)?;
        dx.to_dtype(x.dtype())
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
    let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Softmax over the last dim on an input that needs a gradient: candle's fused kernel
/// forward; dx = y (dy - Σ dy y), in f32 (f64 for f64).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let y = candle_nn::ops::softmax_last_dim(&x.detach().contiguous()?)?;
    with_backward(x, y, "msa-frozen-softmax", |x, y, dy| {
        let (y, dy) = (wide(y)?, wide(dy)?);
        let dot = (&dy * &y)?.sum_keepdim(D::Minus1)?;
        (dy.broadcast_sub(&dot)? * y)?.to_dtype(x.dtype())
    })
}
