//! One layer computed without a graph, whose backward rebuilds the graph from the saved
//! input: the step then holds the layer's input, not the intermediates of the composed ops
//! that made its output. It is `--checkpoint-blocks` for a single layer, always on, for
//! layers whose composed form keeps many times its output (on GPUs, where the CPU's fused
//! ops do not run).

use candle_core::backend::BackendStorage;
use candle_core::{CustomOp1, Layout, Result, Shape, Storage, Tensor, Var};

/// `f(x)` with the memory of one input: the backward recomputes `f` from `x`. Only `x`
/// gets a gradient, so whatever `f` captures must not need one.
pub fn recomputed<F>(x: &Tensor, what: &'static str, f: F) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    let out = f(&x.detach())?;
    let out = if out.is_contiguous() && out.layout().start_offset() == 0 {
        out
    } else {
        out.copy()?
    };
    x.contiguous()?.apply_op1(Recomputed { f, out, what })
}

struct Recomputed<F> {
    f: F,
    /// Contiguous from offset 0, computed from the detached input.
    out: Tensor,
    what: &'static str,
}

/// A copy of the storage of `out`, a fresh contiguous tensor, as an op's result on the
/// backend `pick` selects.
pub(crate) fn precomputed_result<S: BackendStorage>(
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

impl<F> CustomOp1 for Recomputed<F>
where
    F: Fn(&Tensor) -> Result<Tensor> + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.what
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        precomputed_result(&self.out, self.what, |s| match s {
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
        precomputed_result(&self.out, self.what, |s| match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let x = Var::from_tensor(&arg.detach())?;
        let y = (self.f)(x.as_tensor())?;
        let grads = (y * grad.detach())?.sum_all()?.backward()?;
        Ok(grads.get(x.as_tensor()).cloned())
    }
}
