//! An op whose output is computed beforehand, outside the graph, and whose backward pass is
//! a given formula: how a layer replaces the dozens of nodes its composed ops would leave
//! in candle's graph (each costing the backward walk a zero fill and an add) by one.

use candle_core::backend::BackendStorage;
use candle_core::{CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor, Var};
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

/// One layer computed without a graph, whose backward pass rebuilds the graph from the
/// saved input: the step then holds the layer's input, not the intermediates of the
/// composed ops that made its output (`--checkpoint-blocks` for a single layer, always on).
///
/// `f(x)` with the memory of one input: the backward recomputes `f` from `x`. Only `x`
/// gets a gradient, so whatever `f` captures must not need one.
pub fn recomputed<F>(x: &Tensor, what: &'static str, f: F) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    let y = f(&x.detach())?;
    with_backward(x, y, what, move |x, _, dy| {
        let x = Var::from_tensor(x)?;
        let grads = (f(x.as_tensor())? * dy)?.sum_all()?.backward()?;
        match grads.get(x.as_tensor()) {
            Some(dx) => Ok(dx.clone()),
            None => x.zeros_like(),
        }
    })
}
