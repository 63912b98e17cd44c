//! Linear layers as single CPU ops over any leading dims (no reshape nodes in the graph).
//!
//! `FrozenLinear`: the bias is accumulated by the gemm, and the backward pass returns the
//! input's gradient alone. candle's matmul backward also computes the weight's gradient,
//! which a frozen layer throws away: a third of the layer's backward work and a
//! weight-sized tensor per layer kept until the end.
//!
//! `TrainableLinear`: the same forward, and all three gradients from three gemm-shaped
//! passes, where the composed version (reshape, matmul, broadcast add, reshape) adds four
//! graph nodes, each with its own zero-filled gradient accumulator.

use super::{affine_operands, gemm_into, grad_like, storage_slice, with_slice, Mat};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// y = x Wᵀ + b for `rows` rows.
fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, (out_dim, in_dim): (usize, usize)) -> Vec<f32> {
    let rows = x.len() / in_dim.max(1);
    let mut y = match b {
        Some(b) => {
            let mut y = Vec::with_capacity(rows * out_dim);
            for _ in 0..rows {
                y.extend_from_slice(b);
            }
            y
        }
        None => vec![0f32; rows * out_dim],
    };
    // SAFETY: y is rows x out, x is rows x in, w is out x in (read as its transpose).
    unsafe {
        gemm_into(
            (rows, out_dim, in_dim),
            y.as_mut_ptr(),
            out_dim,
            b.is_some(),
            Mat::rows(x.as_ptr(), in_dim),
            Mat::rows(w.as_ptr(), in_dim).t(),
            1.0,
            true,
        );
    }
    y
}

/// The input's shape with the last dim replaced.
fn out_shape(layout: &Layout, out_dim: usize) -> Shape {
    let mut dims = layout.shape().dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out_dim;
    }
    Shape::from(dims)
}

/// dx = g W: (rows x out) (out x in).
fn input_grad(g: &[f32], w: &[f32], (out_dim, in_dim): (usize, usize)) -> Vec<f32> {
    let rows = g.len() / out_dim.max(1);
    let mut dx = vec![0f32; rows * in_dim];
    // SAFETY: the shapes above match the buffers.
    unsafe {
        gemm_into(
            (rows, in_dim, out_dim),
            dx.as_mut_ptr(),
            in_dim,
            false,
            Mat::rows(g.as_ptr(), out_dim),
            Mat::rows(w.as_ptr(), in_dim),
            1.0,
            true,
        );
    }
    dx
}

pub struct FrozenLinear {
    /// (out, in), contiguous f32 on CPU.
    pub weight: Tensor,
    /// (out), contiguous f32 on CPU.
    pub bias: Option<Tensor>,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_slice(storage, layout, "frozen-linear")?;
        let dims = self.weight.dims2()?;
        let y = with_slice(&self.weight, |w| match &self.bias {
            Some(b) => with_slice(b, |b| Ok(forward(x, w, Some(b), dims))),
            None => Ok(forward(x, w, None, dims)),
        })?;
        Ok((CpuStorage::F32(y), out_shape(layout, dims.0)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dims = self.weight.dims2()?;
        let grad = grad.contiguous()?;
        let dx = with_slice(&grad, |g| {
            with_slice(&self.weight, |w| Ok(input_grad(g, w, dims)))
        })?;
        grad_like(dx, arg)
    }
}

/// y = x Wᵀ + b with x (.., in), W (out, in), b (out), all differentiable.
pub struct TrainableLinear;

impl CustomOp3 for TrainableLinear {
    fn name(&self) -> &'static str {
        "msa-linear"
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
        let fits = |x: &[usize], w: &[usize], b: &[usize]| {
            w.len() == 2 && x.last() == Some(&w[1]) && b == [w[0]]
        };
        let [x, w, b] = affine_operands("linear", [(s1, l1), (s2, l2), (s3, l3)], fits)?;
        let (out_dim, in_dim) = l2.shape().dims2()?;
        let y = forward(x, w, Some(b), (out_dim, in_dim));
        Ok((CpuStorage::F32(y), out_shape(l1, out_dim)))
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
        let dims = w.dims2()?;
        let grad = grad.contiguous()?;
        let (dx, dw, db) = with_slice(&grad, |g| {
            with_slice(x, |xs| {
                with_slice(w, |ws| {
                    Ok((
                        input_grad(g, ws, dims),
                        weight_grad(g, xs, dims),
                        bias_grad(g, dims.0),
                    ))
                })
            })
        })?;
        Ok((grad_like(dx, x)?, grad_like(dw, w)?, grad_like(db, b)?))
    }
}

/// dW = gᵀ x: (out x rows) (rows x in).
fn weight_grad(g: &[f32], x: &[f32], (out_dim, in_dim): (usize, usize)) -> Vec<f32> {
    let rows = g.len() / out_dim.max(1);
    let mut dw = vec![0f32; out_dim * in_dim];
    // SAFETY: the shapes above match the buffers.
    unsafe {
        gemm_into(
            (out_dim, in_dim, rows),
            dw.as_mut_ptr(),
            in_dim,
            false,
            Mat::rows(g.as_ptr(), out_dim).t(),
            Mat::rows(x.as_ptr(), in_dim),
            1.0,
            true,
        );
    }
    dw
}

/// db = Σ_rows g, summed in parallel over row chunks.
fn bias_grad(g: &[f32], out_dim: usize) -> Vec<f32> {
    let add = |mut acc: Vec<f32>, row: &[f32]| {
        for (a, v) in acc.iter_mut().zip(row) {
            *a += v;
        }
        acc
    };
    g.par_chunks(out_dim.max(1) * 64)
        .map(|chunk| chunk.chunks(out_dim.max(1)).fold(vec![0f32; out_dim], add))
        .reduce(|| vec![0f32; out_dim], |a, b| add(a, &b))
}
