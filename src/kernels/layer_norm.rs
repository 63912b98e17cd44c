//! LayerNorm over the last dim as one CPU op with its own backward: the composed version
//! makes nine graph nodes and keeps seven input-sized intermediates for the backward pass;
//! these keep none beyond their input and output. `FrozenLayerNorm` returns the input's
//! gradient alone; `TrainableLayerNorm` (full fine-tuning) those of weight and bias too.

use super::{affine_operands, grad_like, par_filled, storage_slice, with_slice};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per task when the weight and bias gradients are summed.
const ROWS: usize = 64;

/// The row's mean and 1 / σ.
fn row_stats(x: &[f32], eps: f64) -> (f64, f64) {
    let c = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / c;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c;
    (mean, 1.0 / (var + eps).sqrt())
}

fn normalize(x: &[f32], weight: &[f32], bias: &[f32], eps: f64) -> Vec<f32> {
    let c = weight.len();
    let rows_per_chunk = (4096 / c.max(1)).max(1);
    par_filled(x.len(), rows_per_chunk * c, |t, out| {
        let x = &x[t * rows_per_chunk * c..];
        for (y, x) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            let (mean, inv) = row_stats(x, eps);
            for i in 0..c {
                y[i] = ((x[i] as f64 - mean) * inv) as f32 * weight[i] + bias[i];
            }
        }
    })
}

/// dx = (dy - mean(dy) - x̂ mean(dy x̂)) / σ with dy = g w, in place of g.
fn input_grad_row(g: &mut [f32], x: &[f32], weight: &[f32], eps: f64) {
    let c = x.len() as f64;
    let (mean, inv) = row_stats(x, eps);
    let (mut mean_dy, mut mean_dy_xhat) = (0f64, 0f64);
    for ((g, &x), &w) in g.iter_mut().zip(x).zip(weight) {
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
        let out = normalize(x, &self.weight, &self.bias, self.eps);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let c = self.weight.len();
        let mut dx = grad.flatten_all()?.to_vec1::<f32>()?;
        with_slice(arg, |x| {
            dx.par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .for_each(|(g, x)| input_grad_row(g, x, &self.weight, self.eps));
            Ok(())
        })?;
        grad_like(dx, arg)
    }
}

/// LayerNorm whose weight and bias train: (x, weight, bias), all contiguous f32 on CPU.
pub struct TrainableLayerNorm {
    pub eps: f64,
}

impl CustomOp3 for TrainableLayerNorm {
    fn name(&self) -> &'static str {
        "msa-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let fits =
            |x: &[usize], w: &[usize], b: &[usize]| w.len() == 1 && x.last() == w.first() && b == w;
        let [x, w, b] = affine_operands("layer norm", [(s1, l1), (s2, l2), (s3, l3)], fits)?;
        let out = normalize(x, w, b, self.eps);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut dx = grad.flatten_all()?.to_vec1::<f32>()?;
        let (dw, db) = with_slice(x, |xs| {
            with_slice(w, |ws| {
                let sums = self.affine_grads(&dx, xs, ws.len());
                let c = ws.len();
                dx.par_chunks_mut(c)
                    .zip(xs.par_chunks(c))
                    .for_each(|(g, x)| input_grad_row(g, x, ws, self.eps));
                Ok(sums)
            })
        })?;
        Ok((grad_like(dx, x)?, grad_like(dw, w)?, grad_like(db, b)?))
    }
}

impl TrainableLayerNorm {
    /// (dweight, dbias) = (Σ_rows g x̂, Σ_rows g), summed in parallel over row blocks
    /// in a fixed order.
    fn affine_grads(&self, g: &[f32], x: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
        let zeros = || (vec![0f32; c], vec![0f32; c]);
        let row = |(dw, db): &mut (Vec<f32>, Vec<f32>), r: usize| {
            let (g, x) = (&g[r * c..(r + 1) * c], &x[r * c..(r + 1) * c]);
            let (mean, inv) = row_stats(x, self.eps);
            for i in 0..c {
                dw[i] += g[i] * ((x[i] as f64 - mean) * inv) as f32;
                db[i] += g[i];
            }
        };
        let add = |(mut dw, mut db): (Vec<f32>, Vec<f32>), (w2, b2): (Vec<f32>, Vec<f32>)| {
            dw.iter_mut().zip(w2).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(b2).for_each(|(a, b)| *a += b);
            (dw, db)
        };
        let rows = g.len() / c.max(1);
        super::ordered_reduce(rows, ROWS, zeros, row, |sums| sums, add).unwrap_or_else(zeros)
    }
}
