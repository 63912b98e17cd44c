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
//! Here the forward pass runs outside the graph. A custom op attaches its result to the
//! input, and its backward pass computes the gradients from the formula.

use crate::kernels::fused_backward;
use candle_core::backend::BackendStorage;
use candle_core::{CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D};
use std::sync::Mutex;

type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

/// `y`, computed from `x` without a graph, attached to `x`'s graph with the backward pass
/// `dx = back(x, y, dy)` (all three detached).
pub fn with_backward<B>(x: &Tensor, y: Tensor, what: &'static str, back: B) -> Result<Tensor>
where
    B: Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    let y = Mutex::new(Some(contiguous_from_zero(y)?));
    let back: Box<Backward> = Box::new(back);
    x.apply_op1(OwnBackward { y, what, back })
}

struct OwnBackward {
    /// Contiguous from offset 0, computed from the detached input. The forward pass hands
    /// its storage to the op's output and drops it, so the graph does not hold it twice
    /// (the backward pass gets the output itself).
    y: Mutex<Option<Tensor>>,
    what: &'static str,
    back: Box<Backward>,
}

fn cpu(s: &Storage) -> Option<&candle_core::CpuStorage> {
    match s {
        Storage::Cpu(c) => Some(c),
        _ => None,
    }
}

#[cfg(feature = "cuda")]
fn cuda(s: &Storage) -> Option<&candle_core::CudaStorage> {
    match s {
        Storage::Cuda(c) => Some(c),
        _ => None,
    }
}

/// A backward formula's gradient must have its operand's shape.
fn check_shape(what: &str, grad: &Tensor, operand: &Tensor) -> Result<()> {
    if grad.dims() != operand.dims() {
        candle_core::bail!(
            "{what}: gradient {:?} for an operand {:?}",
            grad.dims(),
            operand.dims()
        );
    }
    Ok(())
}

/// The storage of the output held in `y`, which is emptied.
fn handed_over<S: BackendStorage>(
    y: &Mutex<Option<Tensor>>,
    what: &str,
    pick: impl Fn(&Storage) -> Option<&S>,
) -> Result<(S, Shape)> {
    // A panic elsewhere while holding the lock leaves an Option that is still whole.
    let y = y.lock().unwrap_or_else(|e| e.into_inner()).take();
    match y {
        Some(y) => precomputed_result(&y, what, pick),
        None => candle_core::bail!("{what}: its forward pass ran twice"),
    }
}

/// `y = f(x, w, b)`, computed without a graph, attached to the graph of its three operands
/// with the backward pass `back(x, w, b, dy)`, which gives the gradients of those that need
/// one (each operand comes with its `track_op`, the values detached).
pub fn with_backward3<B>(
    (x, w, b): (&Tensor, &Tensor, &Tensor),
    y: Tensor,
    what: &'static str,
    back: B,
) -> Result<Tensor>
where
    B: Fn([(&Tensor, bool); 3], &Tensor) -> Result<[Option<Tensor>; 3]> + Send + Sync + 'static,
{
    let y = Mutex::new(Some(contiguous_from_zero(y)?));
    let back: Box<Backward3> = Box::new(back);
    x.apply_op3(w, b, OwnBackward3 { y, what, back })
}

type Backward3 = dyn Fn([(&Tensor, bool); 3], &Tensor) -> Result<[Option<Tensor>; 3]> + Send + Sync;

struct OwnBackward3 {
    y: Mutex<Option<Tensor>>,
    what: &'static str,
    back: Box<Backward3>,
}

impl CustomOp3 for OwnBackward3 {
    fn name(&self) -> &'static str {
        self.what
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        handed_over(&self.y, self.what, cpu)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        handed_over(&self.y, self.what, cuda)
    }

    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xd, wd, bd) = (x.detach(), w.detach(), b.detach());
        let args = [
            (&xd, x.track_op()),
            (&wd, w.track_op()),
            (&bd, b.track_op()),
        ];
        let [dx, dw, db] = (self.back)(args, &grad.detach())?;
        for (d, t) in [(&dx, x), (&dw, w), (&db, b)] {
            if let Some(d) = d {
                check_shape(self.what, d, t)?;
            }
        }
        Ok((dx, dw, db))
    }
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
        handed_over(&self.y, self.what, cpu)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        handed_over(&self.y, self.what, cuda)
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = (self.back)(&x.detach(), &y.detach(), &grad.detach())?;
        check_shape(self.what, &dx, x)?;
        Ok(Some(dx))
    }
}

fn contiguous_from_zero(y: Tensor) -> Result<Tensor> {
    match y.is_contiguous() && y.layout().start_offset() == 0 {
        true => Ok(y),
        false => y.copy(),
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
