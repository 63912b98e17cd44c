//! LayerNorm over the last dim with frozen weight and bias, as one CPU op with its own
//! backward: the composed version keeps seven input-sized intermediates for the backward
//! pass; this keeps none beyond its input and output.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

pub struct FrozenLayerNorm {
    /// (C) f32 values, copied out once per call.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub weight_t: Tensor,
    pub eps: f64,
}

impl CustomOp1 for FrozenLayerNorm {
    fn name(&self) -> &'static str {
        "msa-frozen-layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((o1, o2)) = layout.contiguous_offsets() else {
            candle_core::bail!("layer norm needs a contiguous input");
        };
        let x = &storage.as_slice::<f32>()?[o1..o2];
        let c = self.weight.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .for_each(|(y, x)| {
                let mean = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
                let inv = 1.0 / (var + self.eps).sqrt();
                for i in 0..c {
                    y[i] = ((x[i] as f64 - mean) * inv) as f32 * self.weight[i] + self.bias[i];
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = (dy - mean(dy) - x̂ mean(dy x̂)) / σ, with dy = g w.
        let mean = arg.mean_keepdim(D::Minus1)?;
        let xc = arg.broadcast_sub(&mean)?;
        let inv = (xc.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let xhat = xc.broadcast_mul(&inv)?;
        let dy = grad.broadcast_mul(&self.weight_t)?;
        let a = dy.mean_keepdim(D::Minus1)?;
        let b = (&dy * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = dy.broadcast_sub(&a)?.sub(&xhat.broadcast_mul(&b)?)?;
        Ok(Some(dx.broadcast_mul(&inv)?))
    }
}
