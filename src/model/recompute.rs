//! Activation checkpointing (`msa train --checkpoint-blocks`): an encoder block runs forward
//! without keeping its activations, and the backward pass runs it again from its input.
//!
//! candle has no checkpoint primitive, so a block becomes one custom op of (input, output).
//! Its forward hands back the output computed beforehand, whose graph was dropped at once;
//! its backward recomputes the block from the input with a graph, back-propagates the
//! output gradient through it, returns the input gradient and files the gradients of the
//! block's trainable tensors (its adapters) in `Recompute`. After `loss.backward()`,
//! `Recompute::merge_into` adds them to the run's gradients. Peak memory then holds one
//! block's activations instead of every block's.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, TensorId, Var};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Gradients of the trainable tensors found while recomputing blocks, by tensor id.
pub struct Recompute {
    trainable: HashSet<TensorId>,
    grads: Mutex<HashMap<TensorId, Tensor>>,
}

impl Recompute {
    /// For a run whose trainable tensors are `vars`.
    pub fn new<'a>(vars: impl IntoIterator<Item = &'a Var>) -> Arc<Self> {
        Arc::new(Self {
            trainable: vars.into_iter().map(|v| v.as_tensor().id()).collect(),
            grads: Mutex::default(),
        })
    }

    /// `block` applied to `x` so that its activations are recomputed in the backward pass.
    pub fn run<F>(self: &Arc<Self>, x: &Tensor, block: F) -> Result<Tensor>
    where
        F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
    {
        let y = block(&x.detach())?.detach().contiguous()?;
        // An input no trainable tensor feeds is made a variable, so that the op is part of
        // the graph and its backward runs (the block's own adapters need it).
        let x = match x.track_op() {
            true => x.clone(),
            false => Var::from_tensor(x)?.into_inner(),
        };
        let op: Box<dyn CustomOp2 + Send + Sync> = Box::new(Checkpointed {
            block: Box::new(block),
            found: self.clone(),
        });
        x.apply_op2_arc(&y, Arc::new(op))
    }

    /// Adds the gradients found while recomputing to `grads` (for tensors both hold, the
    /// sum), and forgets them.
    pub fn merge_into(&self, grads: &mut GradStore) -> Result<()> {
        let found = std::mem::take(&mut *self.lock());
        for (id, g) in found {
            let sum = match grads.get_id(id) {
                Some(other) => (other + g)?,
                None => g,
            };
            grads.insert_id(id, sum);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TensorId, Tensor>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.grads.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, grads: &GradStore) -> Result<()> {
        let mut found = self.lock();
        for &id in grads.get_ids().filter(|id| self.trainable.contains(id)) {
            let Some(g) = grads.get_id(id) else { continue };
            let sum = match found.remove(&id) {
                Some(other) => (other + g)?,
                None => g.clone(),
            };
            found.insert(id, sum);
        }
        Ok(())
    }
}

/// `forward(block, x)`, recomputed in the backward pass when `recompute` is given (the
/// block is then cloned into the op; without it, nothing is cloned).
pub fn run_block<B, F>(
    recompute: Option<&Arc<Recompute>>,
    x: &Tensor,
    block: &B,
    forward: F,
) -> Result<Tensor>
where
    B: Clone + Send + Sync + 'static,
    F: Fn(&B, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    match recompute {
        Some(r) => {
            let block = block.clone();
            r.run(x, move |x| forward(&block, x))
        }
        None => forward(block, x),
    }
}

type Block = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

struct Checkpointed {
    block: Block,
    found: Arc<Recompute>,
}

fn copy<S>(s: &S, l: &Layout) -> Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let shape = l.shape().clone();
    // SAFETY: every element is written by the strided copy that follows.
    let mut out = unsafe { s.device().alloc_uninit(&shape, s.dtype())? };
    s.copy_strided_src(&mut out, 0, l)?;
    Ok((out, shape))
}

impl CustomOp2 for Checkpointed {
    fn name(&self) -> &'static str {
        "msa-recomputed-block"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy(y, l)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        copy(y, l)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let input = Var::from_tensor(&x.detach())?;
        let y = (self.block)(input.as_tensor())?;
        let grads = (y * grad.detach())?.sum_all()?.backward()?;
        self.found.add(&grads)?;
        Ok((grads.get(input.as_tensor()).cloned(), None))
    }
}
