//! Softmax over the last dim as one op with its own backward, for training on CPU: the
//! composed version keeps four logits-sized intermediates alive until the backward pass;
//! this keeps only its output.

use super::simd::softmax_row;
use super::storage_slice;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

pub struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "msa-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = storage_slice(storage, layout, "softmax")?.to_vec();
        out.par_chunks_mut(n).for_each(softmax_row);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (g - sum(g * y))
        let dot = (grad * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some(res.mul(&grad.broadcast_sub(&dot)?)?))
    }
}
