//! Attention with decomposed relative-position bias as one differentiable CPU op.
//!
//! The forward pass is the inference kernel of `attention_cpu` and keeps nothing but its
//! input (the qkv projection) and output. The backward pass recomputes the probabilities a
//! block of query rows at a time, so neither the N x N probabilities nor any of the q/k/v
//! copies, permutes and bias tensors of the composed version are ever stored: at 1024 px a
//! global block would otherwise keep 12 x 4096² floats (805 MB) for the backward pass.
//! `FusedAttention` takes frozen relative-position tables; `FusedAttentionTables` takes them
//! as inputs and returns their gradients too (full fine-tuning).

use super::attention_cpu::{attention, finish_rows, RelTables, RowCtx, SharedOut, ROW_BLOCK};
use super::{gemm_into, grad_like, storage_slice, with_slice, Mat};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// softmax(scale q kᵀ + bias) v over every head; input (B, H, W, 3C) (or (B, H*W, 3C)) as
/// the qkv Linear gives it, output of the same shape with C channels.
pub struct FusedAttention {
    pub grid: (usize, usize),
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Gathered tables Rh (H, H, hd) and Rw (W, W, hd); frozen.
    pub rel: Option<(Vec<f32>, Vec<f32>)>,
}

impl FusedAttention {
    fn tables(&self) -> Option<RelTables<'_>> {
        self.rel.as_ref().map(|(rh, rw)| RelTables { rh, rw })
    }

    fn batch(&self, elems: usize) -> Result<usize> {
        let per_item = self.grid.0 * self.grid.1 * 3 * self.heads * self.head_dim;
        if per_item == 0 || !elems.is_multiple_of(per_item) {
            candle_core::bail!(
                "fused attention: {elems} qkv values are not a multiple of H*W*3C = {per_item}"
            );
        }
        Ok(elems / per_item)
    }
}

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "msa-fused-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = storage_slice(storage, layout, "fused attention")?;
        let b = self.batch(qkv.len())?;
        let out = attention(
            qkv,
            b,
            self.grid,
            self.heads,
            self.head_dim,
            self.scale,
            self.tables(),
        );
        let mut dims = layout.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.heads * self.head_dim;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let dqkv = with_slice(arg, |qkv| {
            with_slice(&grad, |dout| {
                let b = self.batch(qkv.len())?;
                Ok(attention_backward(qkv, dout, b, self, false).0)
            })
        })?;
        grad_like(dqkv, arg)
    }
}

/// `FusedAttention` with trainable relative-position tables: the gathered tables Rh
/// (H, H, hd) and Rw (W, W, hd) are the op's second and third inputs and get gradients.
pub struct FusedAttentionTables {
    pub grid: (usize, usize),
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

impl FusedAttentionTables {
    fn with_tables(&self, rh: &[f32], rw: &[f32]) -> Result<FusedAttention> {
        let (h, w) = self.grid;
        let hd = self.head_dim;
        if rh.len() != h * h * hd || rw.len() != w * w * hd {
            candle_core::bail!(
                "fused attention: tables of {} and {} values, expected ({h}, {h}, {hd}) and ({w}, {w}, {hd})",
                rh.len(),
                rw.len()
            );
        }
        Ok(FusedAttention {
            grid: self.grid,
            heads: self.heads,
            head_dim: hd,
            scale: self.scale,
            rel: Some((rh.to_vec(), rw.to_vec())),
        })
    }
}

impl CustomOp3 for FusedAttentionTables {
    fn name(&self) -> &'static str {
        "msa-fused-attention-tables"
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
        let rh = storage_slice(s2, l2, "fused attention")?;
        let rw = storage_slice(s3, l3, "fused attention")?;
        self.with_tables(rh, rw)?.cpu_fwd(s1, l1)
    }

    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        qkv: &Tensor,
        rh: &Tensor,
        rw: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let op = with_slice(rh, |a| with_slice(rw, |b| self.with_tables(a, b)))?;
        let (dqkv, tables) = with_slice(qkv, |x| {
            with_slice(&grad, |dout| {
                let b = op.batch(x.len())?;
                Ok(attention_backward(x, dout, b, &op, true))
            })
        })?;
        let (drh, drw) = tables.unwrap_or_default();
        Ok((
            grad_like(dqkv, qkv)?,
            grad_like(drh, rh)?,
            grad_like(drw, rw)?,
        ))
    }
}

/// Gradient of `attention` with respect to its qkv input, (B, N, 3C), and with
/// `table_grads` those of the gathered tables Rh and Rw.
fn attention_backward(
    qkv: &[f32],
    dout: &[f32],
    b: usize,
    op: &FusedAttention,
    table_grads: bool,
) -> (Vec<f32>, Option<TableGrads>) {
    let (h, w) = op.grid;
    let (n, heads, hd) = (h * w, op.heads, op.head_dim);
    let (c, c3) = (heads * hd, 3 * heads * hd);
    assert_eq!(qkv.len(), b * n * c3, "qkv buffer size");
    assert_eq!(dout.len(), b * n * c, "output gradient size");
    let mut dqkv = vec![0f32; b * n * c3];
    let shared = SharedOut(dqkv.as_mut_ptr());
    let block = if n > 2 * ROW_BLOCK { ROW_BLOCK } else { n };
    let tables = op.tables();
    let table_grads = table_grads && tables.is_some();
    let sums = (0..b * heads)
        .into_par_iter()
        .fold(
            || Scratch::new(block, n, hd, op.grid, table_grads),
            |mut s, task| {
                let (bi, head) = (task / heads, task % heads);
                let base = bi * n * c3 + head * hd;
                let head_in = HeadInput {
                    q: &qkv[base..],
                    k: &qkv[base + c..],
                    v: &qkv[base + 2 * c..],
                    dout: &dout[bi * n * c + head * hd..],
                    out_stride: c,
                };
                let ctx = RowCtx {
                    q: head_in.q,
                    stride: c3,
                    head_dim: hd,
                    hw: op.grid,
                    nk: n,
                    rel: tables.as_ref(),
                };
                let out = shared;
                // SAFETY: task (bi, head) alone writes this head's q, k and v columns of item bi.
                let dst = unsafe { out.0.add(base) };
                for r0 in (0..n).step_by(block) {
                    let rows = block.min(n - r0);
                    unsafe { head_block_backward(&head_in, &ctx, op.scale, r0, rows, &mut s, dst) };
                }
                s
            },
        )
        .map(|s| (s.drh, s.drw))
        .reduce(|| (vec![], vec![]), add_table_grads);
    (dqkv, table_grads.then_some(sums))
}

/// Gradients of the gathered tables Rh and Rw.
type TableGrads = (Vec<f32>, Vec<f32>);

/// Sum of two threads' table gradients (an empty pair is zero).
fn add_table_grads(a: TableGrads, b: TableGrads) -> TableGrads {
    let add = |mut x: Vec<f32>, y: Vec<f32>| {
        if x.is_empty() {
            return y;
        }
        for (x, y) in x.iter_mut().zip(&y) {
            *x += y;
        }
        x
    };
    (add(a.0, b.0), add(a.1, b.1))
}

/// One head's inputs: q, k, v rows (stride 3C) and the output gradient rows (stride C).
struct HeadInput<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    dout: &'a [f32],
    out_stride: usize,
}

/// Per-thread buffers: probabilities and their gradient for a row block, the query
/// gradient of the block, the bias row, and (when the tables train) the thread's share of
/// the table gradients.
struct Scratch {
    p: Vec<f32>,
    ds: Vec<f32>,
    dq: Vec<f32>,
    bias: Vec<f32>,
    col_sums: Vec<f32>,
    drh: Vec<f32>,
    drw: Vec<f32>,
}

impl Scratch {
    fn new(block: usize, n: usize, hd: usize, (h, w): (usize, usize), tables: bool) -> Self {
        let table = |side: usize| vec![0f32; if tables { side * side * hd } else { 0 }];
        Self {
            p: vec![0f32; block * n],
            ds: vec![0f32; block * n],
            dq: vec![0f32; block * hd],
            bias: vec![0f32; h + w],
            col_sums: vec![0f32; w],
            drh: table(h),
            drw: table(w),
        }
    }
}

/// Gradients from query rows r0..r0+rows of one head: writes those rows of dq and adds
/// their share into every row of dk and dv (`dst` points at this head's dq of token 0;
/// dk and dv follow at +C and +2C, rows 3C apart).
///
/// # Safety
/// `dst` must be this task's exclusive region of a (N, 3C) gradient buffer.
unsafe fn head_block_backward(
    x: &HeadInput,
    ctx: &RowCtx,
    scale: f32,
    r0: usize,
    rows: usize,
    s: &mut Scratch,
    dst: *mut f32,
) {
    let (n, hd, c3) = (ctx.nk, ctx.head_dim, ctx.stride);
    let c = x.out_stride;
    let (p, ds) = (&mut s.p[..rows * n], &mut s.ds[..rows * n]);
    let q_blk = Mat::rows(x.q.as_ptr().add(r0 * c3), c3);
    let k = Mat::rows(x.k.as_ptr(), c3);
    let v = Mat::rows(x.v.as_ptr(), c3);
    let dout_blk = Mat::rows(x.dout.as_ptr().add(r0 * c), c);
    // Single-threaded gemms: the (item, head) tasks already run in parallel.
    // P = softmax(scale q kᵀ + bias), recomputed.
    gemm_into(
        (rows, n, hd),
        p.as_mut_ptr(),
        n,
        false,
        q_blk,
        k.t(),
        scale,
        false,
    );
    finish_rows(p, r0, ctx, &mut s.bias);
    // dP = dO vᵀ, then dS = P (dP - rowsum(P dP)) in place.
    gemm_into(
        (rows, n, hd),
        ds.as_mut_ptr(),
        n,
        false,
        dout_blk,
        v.t(),
        1.0,
        false,
    );
    let dq = &mut s.dq[..rows * hd];
    let rows_in = GradRows {
        p,
        ds,
        dq,
        col_sums: &mut s.col_sums,
        drh: &mut s.drh,
        drw: &mut s.drw,
        r0,
    };
    softmax_grad_rows(rows_in, ctx);
    // dq = bias part (already in dq) + scale dS k.
    let ds_m = Mat::rows(ds.as_ptr(), n);
    gemm_into(
        (rows, hd, n),
        dq.as_mut_ptr(),
        hd,
        true,
        ds_m,
        k,
        scale,
        false,
    );
    for (i, row) in dq.chunks_exact(hd).enumerate() {
        std::ptr::copy_nonoverlapping(row.as_ptr(), dst.add((r0 + i) * c3), hd);
    }
    // dk += scale dSᵀ q ; dv += Pᵀ dO.
    let first = r0 == 0;
    let dk = dst.add(c3 / 3);
    let dv = dst.add(2 * c3 / 3);
    gemm_into((n, hd, rows), dk, c3, !first, ds_m.t(), q_blk, scale, false);
    let p_m = Mat::rows(p.as_ptr(), n);
    gemm_into((n, hd, rows), dv, c3, !first, p_m.t(), dout_blk, 1.0, false);
}

/// One row block's buffers for `softmax_grad_rows`.
struct GradRows<'a> {
    p: &'a [f32],
    ds: &'a mut [f32],
    dq: &'a mut [f32],
    col_sums: &'a mut [f32],
    /// Table gradients to add into; empty when the tables are frozen.
    drh: &'a mut [f32],
    drw: &'a mut [f32],
    /// Token of the block's first row.
    r0: usize,
}

/// Softmax backward for a block of rows (dS = P (dP - rowsum(P dP)), into `ds`), and the
/// query gradient of the relative-position bias, which does not depend on the keys:
/// dq_i = Σ_ky (Σ_kx dS) Rh[qy, ky] + Σ_kx (Σ_ky dS) Rw[qx, kx] (zero without bias);
/// with trainable tables also dRh[qy, ky] += (Σ_kx dS) q_i and dRw[qx, kx] += (Σ_ky dS) q_i.
fn softmax_grad_rows(rows: GradRows, ctx: &RowCtx) {
    super::simd::with_avx2!(softmax_grad_rows_avx2, softmax_grad_rows_body, rows, ctx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_grad_rows_avx2(rows: GradRows, ctx: &RowCtx) {
    softmax_grad_rows_body(rows, ctx)
}

#[inline(always)]
fn softmax_grad_rows_body(rows: GradRows, ctx: &RowCtx) {
    let GradRows {
        p,
        ds,
        dq,
        col_sums,
        drh,
        drw,
        r0,
    } = rows;
    let (n, hd) = (ctx.nk, ctx.head_dim);
    let (h, w) = ctx.hw;
    let rows = p.chunks_exact(n).zip(ds.chunks_exact_mut(n));
    for (r, ((prow, drow), dq_row)) in rows.zip(dq.chunks_exact_mut(hd)).enumerate() {
        let dot = super::simd::dot_body(prow, drow);
        for (d, &pv) in drow.iter_mut().zip(prow) {
            *d = pv * (*d - dot);
        }
        dq_row.fill(0.0);
        let Some(t) = ctx.rel else { continue };
        let token = r0 + r;
        let (qy, qx) = (token / w, token % w);
        let q = &ctx.q[token * ctx.stride..token * ctx.stride + hd];
        let tables = !drh.is_empty();
        col_sums.fill(0.0);
        for (ky, seg) in drow.chunks_exact(w).enumerate() {
            let row_sum = super::simd::lanes_sum(seg);
            let at = (qy * h + ky) * hd..(qy * h + ky + 1) * hd;
            axpy(dq_row, row_sum, &t.rh[at.clone()]);
            if tables {
                axpy(&mut drh[at], row_sum, q);
            }
            for (cs, &v) in col_sums.iter_mut().zip(seg) {
                *cs += v;
            }
        }
        for (kx, &sum) in col_sums.iter().enumerate() {
            let at = (qx * w + kx) * hd..(qx * w + kx + 1) * hd;
            axpy(dq_row, sum, &t.rw[at.clone()]);
            if tables {
                axpy(&mut drw[at], sum, q);
            }
        }
    }
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}
