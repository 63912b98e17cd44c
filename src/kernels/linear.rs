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

use super::simd::gelu_in_place;
use super::{affine_operands, gemm_into, grad_like, par_filled, storage_slice, with_slice, Mat};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// What a fused layer applies to each output after the affine map (and the residual).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    Gelu,
}

/// Output values per row tile: small enough for the tile to stay in L2 between the gemm
/// and the epilogue, large enough that packing the weight is a small share of the work.
const TILE_VALUES: usize = 1 << 16;

/// y = act(x Wᵀ + b [+ residual]) for every row of x, W (out, in). Row tiles run in
/// parallel, each with a single-threaded gemm, and the epilogue runs on a tile while it
/// is still in cache.
pub fn affine_rows(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    residual: Option<&[f32]>,
    (out_dim, in_dim): (usize, usize),
    act: Epilogue,
) -> Vec<f32> {
    let rows = x.len() / in_dim.max(1);
    if out_dim == 0 {
        return vec![];
    }
    let tile_rows = (TILE_VALUES / out_dim).clamp(16, 1024);
    par_filled(rows * out_dim, tile_rows * out_dim, |t, dst| {
        let r0 = t * tile_rows;
        let n = dst.len() / out_dim;
        if let Some(res) = residual {
            dst.copy_from_slice(&res[r0 * out_dim..(r0 + n) * out_dim]);
        }
        if let Some(b) = b {
            for row in dst.chunks_exact_mut(out_dim) {
                for (v, &bv) in row.iter_mut().zip(b) {
                    *v += bv;
                }
            }
        }
        let accumulate = residual.is_some() || b.is_some();
        // SAFETY: dst is n x out, the x rows r0.. are n x in, w is out x in (read as
        // its transpose).
        unsafe {
            gemm_into(
                (n, out_dim, in_dim),
                dst.as_mut_ptr(),
                out_dim,
                accumulate,
                Mat::rows(x.as_ptr().add(r0 * in_dim), in_dim),
                Mat::rows(w.as_ptr(), in_dim).t(),
                1.0,
                false,
            );
        }
        if act == Epilogue::Gelu {
            gelu_in_place(dst);
        }
    })
}

/// y = x Wᵀ + b for `rows` rows.
fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, dims: (usize, usize)) -> Vec<f32> {
    affine_rows(x, w, b, None, dims, Epilogue::None)
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
