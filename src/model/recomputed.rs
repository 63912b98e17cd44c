//! One layer computed without a graph, whose backward rebuilds the graph from the saved
//! input: the step then holds the layer's input, not the intermediates of the composed ops
//! that made its output. It is `--checkpoint-blocks` for a single layer, always on, for
//! layers whose composed form keeps many times its output (on GPUs, where the CPU's fused
//! ops do not run).

use super::own_backward::with_backward;
use candle_core::{Result, Tensor, Var};

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
