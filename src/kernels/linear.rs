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
use super::{
    affine_operands, gemm_into, grad_like, par_filled, storage_slice, with_opt_slice, with_slice,
    Mat,
};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

/// What a fused layer applies to each output after the affine map (and the residual).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    Gelu,
}

/// Output values per row tile: small enough for the tile to stay in L2 between the gemm
/// and the epilogue. Tiles have at least 256 rows all the same, because every tile packs
/// the whole weight again (measured: 320 -> 1280 on 4096 rows ran at 35-43 GMAC/s with
/// 51-row tiles and 50-53 with 256).
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
    let tile_rows = (TILE_VALUES / out_dim).clamp(256, 1024);
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
        let y = with_slice(&self.weight, |w| {
            with_opt_slice(self.bias.as_ref(), |b| Ok(forward(x, w, b, dims)))
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
    let per = out_dim.max(1);
    let rows = g.len() / per;
    super::ordered_reduce(
        rows,
        64,
        || vec![0f32; out_dim],
        |acc, r| {
            for (a, v) in acc.iter_mut().zip(&g[r * per..(r + 1) * per]) {
                *a += v;
            }
        },
        |acc| acc,
        |a, b| add(a, &b),
    )
    .unwrap_or_else(|| vec![0f32; out_dim])
}

/// A frozen two-layer MLP, fc2(GELU(fc1(x))), as one op that keeps only its input: the
/// backward pass recomputes the hidden layer a row tile at a time. In a TinyViT block the
/// hidden layer is four times as wide as the tokens; keeping its pre- and post-GELU
/// values for the backward pass was the largest share of an adapter training step's
/// memory (about 340 MB per 256 px image for LiteMedSAM).
pub struct FrozenMlp {
    /// (hidden, in), (hidden), (out, hidden), (out): contiguous f32 on CPU.
    pub fc1: (Tensor, Tensor),
    pub fc2: (Tensor, Tensor),
}

impl FrozenMlp {
    fn dims(&self) -> Result<(usize, usize, usize)> {
        let (hidden, in_dim) = self.fc1.0.dims2()?;
        let (out_dim, hidden2) = self.fc2.0.dims2()?;
        if hidden2 != hidden || self.fc1.1.dims() != [hidden] || self.fc2.1.dims() != [out_dim] {
            candle_core::bail!(
                "frozen MLP: fc1 {:?} + {:?} and fc2 {:?} + {:?} do not chain",
                self.fc1.0.dims(),
                self.fc1.1.dims(),
                self.fc2.0.dims(),
                self.fc2.1.dims()
            );
        }
        Ok((in_dim, hidden, out_dim))
    }
}

/// Rows of a backward tile: its hidden-layer buffers are rows x hidden, twice.
const MLP_TILE_ROWS: usize = 256;

impl CustomOp1 for FrozenMlp {
    fn name(&self) -> &'static str {
        "msa-frozen-mlp"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (in_dim, hidden, out_dim) = self.dims()?;
        if layout.dims().last() != Some(&in_dim) {
            candle_core::bail!(
                "frozen MLP: input {:?} does not end in {in_dim}",
                layout.dims()
            );
        }
        let x = storage_slice(storage, layout, "frozen MLP")?;
        let h = with_slice(&self.fc1.0, |w| {
            with_slice(&self.fc1.1, |b| {
                Ok(affine_rows(
                    x,
                    w,
                    Some(b),
                    None,
                    (hidden, in_dim),
                    Epilogue::Gelu,
                ))
            })
        })?;
        let y = with_slice(&self.fc2.0, |w| {
            with_slice(&self.fc2.1, |b| {
                Ok(affine_rows(
                    &h,
                    w,
                    Some(b),
                    None,
                    (out_dim, hidden),
                    Epilogue::None,
                ))
            })
        })?;
        Ok((CpuStorage::F32(y), out_shape(layout, out_dim)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (in_dim, hidden, out_dim) = self.dims()?;
        let grad = grad.contiguous()?;
        let dx = with_slice(arg, |x| {
            with_slice(&grad, |g| {
                with_slice(&self.fc1.0, |w1| {
                    with_slice(&self.fc1.1, |b1| {
                        with_slice(&self.fc2.0, |w2| {
                            let tile = |t: usize, dx: &mut [f32]| {
                                let rows = dx.len() / in_dim;
                                let r0 = t * MLP_TILE_ROWS;
                                let x = &x[r0 * in_dim..(r0 + rows) * in_dim];
                                let g = &g[r0 * out_dim..(r0 + rows) * out_dim];
                                mlp_input_grad_tile(
                                    x,
                                    g,
                                    (w1, b1, w2),
                                    (in_dim, hidden, out_dim),
                                    dx,
                                );
                            };
                            Ok(par_filled(x.len(), MLP_TILE_ROWS * in_dim, tile))
                        })
                    })
                })
            })
        })?;
        grad_like(dx, arg)
    }
}

/// dx for one row tile: z = x W1ᵀ + b1 (recomputed), dz = (g W2) ⊙ GELU'(z), dx = dz W1.
fn mlp_input_grad_tile(
    x: &[f32],
    g: &[f32],
    (w1, b1, w2): (&[f32], &[f32], &[f32]),
    (in_dim, hidden, out_dim): (usize, usize, usize),
    dx: &mut [f32],
) {
    let rows = x.len() / in_dim;
    let mut z = Vec::with_capacity(rows * hidden);
    for _ in 0..rows {
        z.extend_from_slice(b1);
    }
    let mut dz = vec![0f32; rows * hidden];
    // SAFETY: z and dz are rows x hidden, x rows x in, g rows x out, w1 hidden x in,
    // w2 out x hidden, dx rows x in.
    unsafe {
        gemm_into(
            (rows, hidden, in_dim),
            z.as_mut_ptr(),
            hidden,
            true,
            Mat::rows(x.as_ptr(), in_dim),
            Mat::rows(w1.as_ptr(), in_dim).t(),
            1.0,
            false,
        );
        gemm_into(
            (rows, hidden, out_dim),
            dz.as_mut_ptr(),
            hidden,
            false,
            Mat::rows(g.as_ptr(), out_dim),
            Mat::rows(w2.as_ptr(), hidden),
            1.0,
            false,
        );
    }
    super::simd::gelu_grad_in_place(&mut dz, &z);
    // SAFETY: as above.
    unsafe {
        gemm_into(
            (rows, in_dim, hidden),
            dx.as_mut_ptr(),
            in_dim,
            false,
            Mat::rows(dz.as_ptr(), hidden),
            Mat::rows(w1.as_ptr(), in_dim),
            1.0,
            false,
        );
    }
}
