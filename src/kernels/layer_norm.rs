//! LayerNorm over the last dim with frozen weight and bias, as one CPU op with its own
//! backward: the composed version keeps seven input-sized intermediates for the backward
//! pass; this keeps none beyond its input and output.

use super::{storage_slice, with_slice};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub struct FrozenLayerNorm {
    /// (C) f32 values, copied out once per call.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f64,
}

impl CustomOp1 for FrozenLayerNorm {
    fn name(&self) -> &'static str {
        "msa-frozen-layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_slice(storage, layout, "layer norm")?;
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
        let c = self.weight.len();
        let mut dx = grad.flatten_all()?.to_vec1::<f32>()?;
        with_slice(arg, |x| {
            dx.par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .for_each(|(g, x)| self.row_backward(g, x));
            Ok(())
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

impl FrozenLayerNorm {
    /// dx = (dy - mean(dy) - x̂ mean(dy x̂)) / σ with dy = g w, in place of g.
    fn row_backward(&self, g: &mut [f32], x: &[f32]) {
        let c = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / c;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c;
        let inv = 1.0 / (var + self.eps).sqrt();
        let (mut mean_dy, mut mean_dy_xhat) = (0f64, 0f64);
        for ((g, &x), &w) in g.iter_mut().zip(x).zip(&self.weight) {
            *g *= w;
            mean_dy += *g as f64;
            mean_dy_xhat += *g as f64 * (x as f64 - mean) * inv;
        }
        let (a, b) = (mean_dy / c, mean_dy_xhat / c);
        for (g, &x) in g.iter_mut().zip(x) {
            let xhat = (x as f64 - mean) * inv;
            *g = ((*g as f64 - a - xhat * b) * inv) as f32;
        }
    }
}
