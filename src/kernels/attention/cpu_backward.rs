//! Attention with decomposed relative-position bias as one differentiable CPU op.
//!
//! The forward pass is the inference kernel of `attention::cpu` and keeps nothing but its
//! input (the qkv projection) and output. The backward pass recomputes the probabilities a
//! block of query rows at a time, so neither the N x N probabilities nor any of the q/k/v
//! copies, permutes and bias tensors of the composed version are ever stored: at 1024 px a
//! global block would otherwise keep 12 x 4096² floats (805 MB) for the backward pass.
//! `CpuAttention` takes frozen relative-position tables; `CpuAttentionTables` takes them
//! as inputs and returns their gradients too (full fine-tuning).

use super::cpu::{
    attention, attention_general, finish_rows, Bias, Dims, Operand, RelTables, RowCtx, SharedOut,
    ROW_BLOCK,
};
use crate::kernels::{gemm_into, grad_like, storage_slice, with_slice, Mat};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

/// softmax(scale q kᵀ + bias) v over every head; input (B, H, W, 3C) (or (B, H*W, 3C)) as
/// the qkv Linear gives it, output of the same shape with C channels.
pub struct CpuAttention {
    pub grid: (usize, usize),
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Gathered tables Rh (H, H, hd) and Rw (W, W, hd); frozen.
    pub rel: Option<(Vec<f32>, Vec<f32>)>,
}

impl CpuAttention {
    fn tables(&self) -> Option<RelTables<'_>> {
        self.rel.as_ref().map(|(rh, rw)| RelTables { rh, rw })
    }

    fn spec(&self, rel_grads: bool) -> Spec<'_> {
        Spec {
            grid: self.grid,
            heads: self.heads,
            head_dim: self.head_dim,
            scale: self.scale,
            rel: self.tables(),
            table: None,
            layout: QkvLayout::Grouped,
            rel_grads,
            table_grads: false,
        }
    }

    fn batch(&self, elems: usize) -> Result<usize> {
        let per_item = self.grid.0 * self.grid.1 * 3 * self.heads * self.head_dim;
        if per_item == 0 || !elems.is_multiple_of(per_item) {
            candle_core::bail!(
                "CPU attention: {elems} qkv values are not a multiple of H*W*3C = {per_item}"
            );
        }
        Ok(elems / per_item)
    }
}

impl CustomOp1 for CpuAttention {
    fn name(&self) -> &'static str {
        "msa-cpu-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = storage_slice(storage, layout, "CPU attention")?;
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
                Ok(attention_backward(qkv, dout, b, &self.spec(false)).dqkv)
            })
        })?;
        grad_like(dqkv, arg)
    }
}

/// `CpuAttention` with trainable relative-position tables: the gathered tables Rh
/// (H, H, hd) and Rw (W, W, hd) are the op's second and third inputs and get gradients.
pub struct CpuAttentionTables {
    pub grid: (usize, usize),
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

impl CpuAttentionTables {
    fn with_tables(&self, rh: &[f32], rw: &[f32]) -> Result<CpuAttention> {
        let (h, w) = self.grid;
        let hd = self.head_dim;
        if rh.len() != h * h * hd || rw.len() != w * w * hd {
            candle_core::bail!(
                "CPU attention: tables of {} and {} values, expected ({h}, {h}, {hd}) and ({w}, {w}, {hd})",
                rh.len(),
                rw.len()
            );
        }
        Ok(CpuAttention {
            grid: self.grid,
            heads: self.heads,
            head_dim: hd,
            scale: self.scale,
            rel: Some((rh.to_vec(), rw.to_vec())),
        })
    }
}

impl CustomOp3 for CpuAttentionTables {
    fn name(&self) -> &'static str {
        "msa-cpu-attention-tables"
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
        let rh = storage_slice(s2, l2, "CPU attention")?;
        let rw = storage_slice(s3, l3, "CPU attention")?;
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
        let grads = with_slice(qkv, |x| {
            with_slice(&grad, |dout| {
                let b = op.batch(x.len())?;
                Ok(attention_backward(x, dout, b, &op.spec(true)))
            })
        })?;
        let (dqkv, (drh, drw)) = (grads.dqkv, grads.rel.unwrap_or_default());
        Ok((
            grad_like(dqkv, qkv)?,
            grad_like(drh, rh)?,
            grad_like(drw, rw)?,
        ))
    }
}

/// How one head's q, k and v sit among a token's 3C qkv values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum QkvLayout {
    /// q of every head, then k of every head, then v (SAM's ViT).
    Grouped,
    /// q, k, v of head 0, then of head 1, ... (TinyViT).
    PerHead,
}

impl QkvLayout {
    /// (where the head's q starts, k's offset from q, v's offset from q).
    pub(crate) fn offsets(self, head: usize, hd: usize, c: usize) -> (usize, usize, usize) {
        match self {
            QkvLayout::Grouped => (head * hd, c, 2 * c),
            QkvLayout::PerHead => (head * 3 * hd, hd, 2 * hd),
        }
    }
}

/// One attention call's shape, bias and which bias gradients to compute.
pub(crate) struct Spec<'a> {
    /// The token grid (H, W); N = H * W.
    pub grid: (usize, usize),
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub rel: Option<RelTables<'a>>,
    /// A (heads, N, N) bias table.
    pub table: Option<&'a [f32]>,
    pub layout: QkvLayout,
    pub rel_grads: bool,
    pub table_grads: bool,
}

impl Spec<'_> {
    fn bias(&self) -> Bias<'_> {
        match (&self.rel, self.table) {
            (Some(t), _) => Bias::Rel(t),
            (None, Some(t)) => Bias::Table(t),
            (None, None) => Bias::None,
        }
    }
}

/// What `attention_backward` returns.
pub(crate) struct AttentionGrads {
    pub dqkv: Vec<f32>,
    pub rel: Option<TableGrads>,
    pub table: Option<Vec<f32>>,
}

/// Gradient of attention with respect to its qkv input, (B, N, 3C), and, as the spec
/// asks, those of the gathered tables Rh and Rw and of the bias table.
pub(crate) fn attention_backward(qkv: &[f32], dout: &[f32], b: usize, op: &Spec) -> AttentionGrads {
    let (h, w) = op.grid;
    let (n, heads, hd) = (h * w, op.heads, op.head_dim);
    let (c, c3) = (heads * hd, 3 * heads * hd);
    assert_eq!(qkv.len(), b * n * c3, "qkv buffer size");
    assert_eq!(dout.len(), b * n * c, "output gradient size");
    let mut dqkv = vec![0f32; b * n * c3];
    let shared = SharedOut(dqkv.as_mut_ptr());
    let block = if n > 2 * ROW_BLOCK { ROW_BLOCK } else { n };
    let rel_grads = op.rel_grads && op.rel.is_some();
    let table_grads = op.table_grads && op.table.is_some();
    let bias = op.bias();
    let sums = crate::kernels::ordered_reduce(
        b * heads,
        1,
        || {
            Scratch::new(
                block,
                n,
                hd,
                op.grid,
                rel_grads,
                table_grads.then_some(heads),
            )
        },
        |s, task| {
            let (bi, head) = (task / heads, task % heads);
            let (q_at, k_off, v_off) = op.layout.offsets(head, hd, c);
            let base = bi * n * c3 + q_at;
            let head_in = HeadInput {
                q: &qkv[base..],
                k: &qkv[base + k_off..],
                v: &qkv[base + v_off..],
                kv_offsets: (k_off, v_off),
                dout: &dout[bi * n * c + head * hd..],
                out_stride: c,
                head,
            };
            let ctx = RowCtx {
                q: head_in.q,
                stride: c3,
                head_dim: hd,
                hw: op.grid,
                nk: n,
                bias: bias.for_head(head, n, n),
            };
            let out = shared;
            // SAFETY: task (bi, head) alone writes this head's q, k and v columns of item bi.
            let dst = unsafe { out.0.add(base) };
            for r0 in (0..n).step_by(block) {
                let rows = block.min(n - r0);
                unsafe { head_block_backward(&head_in, &ctx, op.scale, r0, rows, s, dst) };
            }
        },
        |s| ((s.drh, s.drw), s.dtable),
        |(ra, ta), (rb, tb)| (add_table_grads(ra, rb), add_grads(ta, tb)),
    )
    .unwrap_or_default();
    AttentionGrads {
        dqkv,
        rel: rel_grads.then_some(sums.0),
        table: table_grads.then_some(sums.1),
    }
}

/// The sum of two threads' gradients (an empty one is zero).
fn add_grads(mut x: Vec<f32>, y: Vec<f32>) -> Vec<f32> {
    if x.is_empty() {
        return y;
    }
    for (x, y) in x.iter_mut().zip(&y) {
        *x += y;
    }
    x
}

/// Gradients of the gathered tables Rh and Rw.
type TableGrads = (Vec<f32>, Vec<f32>);

/// Sum of two threads' table gradients (an empty pair is zero).
fn add_table_grads(a: TableGrads, b: TableGrads) -> TableGrads {
    (add_grads(a.0, b.0), add_grads(a.1, b.1))
}

/// One head's inputs: q, k, v rows (stride 3C) and the output gradient rows (stride C).
struct HeadInput<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// Where k and v sit after q in a token's 3C values.
    kv_offsets: (usize, usize),
    dout: &'a [f32],
    out_stride: usize,
    head: usize,
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
    /// The thread's share of the (heads, N, N) bias table's gradient, when it trains.
    dtable: Vec<f32>,
}

impl Scratch {
    fn new(
        block: usize,
        n: usize,
        hd: usize,
        (h, w): (usize, usize),
        tables: bool,
        table_heads: Option<usize>,
    ) -> Self {
        let table = |side: usize| vec![0f32; if tables { side * side * hd } else { 0 }];
        Self {
            dtable: vec![0f32; table_heads.map_or(0, |heads| heads * n * n)],
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
    let dtable = if s.dtable.is_empty() {
        &mut s.dtable[..]
    } else {
        &mut s.dtable[x.head * n * n..(x.head + 1) * n * n]
    };
    let rows_in = GradRows {
        p,
        ds,
        dq,
        col_sums: &mut s.col_sums,
        drh: &mut s.drh,
        drw: &mut s.drw,
        dtable,
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
    let dk = dst.add(x.kv_offsets.0);
    let dv = dst.add(x.kv_offsets.1);
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
    /// This head's (N, N) bias-table gradient to add into; empty when the table is frozen.
    dtable: &'a mut [f32],
    /// Token of the block's first row.
    r0: usize,
}

/// Softmax backward for a block of rows (dS = P (dP - rowsum(P dP)), into `ds`), and the
/// query gradient of the relative-position bias, which does not depend on the keys:
/// dq_i = Σ_ky (Σ_kx dS) Rh[qy, ky] + Σ_kx (Σ_ky dS) Rw[qx, kx] (zero without bias);
/// with trainable tables also dRh[qy, ky] += (Σ_kx dS) q_i and dRw[qx, kx] += (Σ_ky dS) q_i.
fn softmax_grad_rows(rows: GradRows, ctx: &RowCtx) {
    crate::kernels::simd::with_avx2!(softmax_grad_rows_avx2, softmax_grad_rows_body, rows, ctx)
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
        dtable,
        r0,
    } = rows;
    let (n, hd) = (ctx.nk, ctx.head_dim);
    let (h, w) = ctx.hw;
    let rows = p.chunks_exact(n).zip(ds.chunks_exact_mut(n));
    for (r, ((prow, drow), dq_row)) in rows.zip(dq.chunks_exact_mut(hd)).enumerate() {
        let dot = crate::kernels::simd::dot_body(prow, drow);
        for (d, &pv) in drow.iter_mut().zip(prow) {
            *d = pv * (*d - dot);
        }
        dq_row.fill(0.0);
        if !dtable.is_empty() {
            let at = (r0 + r) * n;
            for (t, &d) in dtable[at..at + n].iter_mut().zip(drow.iter()) {
                *t += d;
            }
        }
        let Bias::Rel(t) = ctx.bias else { continue };
        let token = r0 + r;
        let (qy, qx) = (token / w, token % w);
        let q = &ctx.q[token * ctx.stride..token * ctx.stride + hd];
        let tables = !drh.is_empty();
        col_sums.fill(0.0);
        for (ky, seg) in drow.chunks_exact(w).enumerate() {
            let row_sum = crate::kernels::simd::lanes_sum(seg);
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

/// TinyViT's attention as one differentiable CPU op: softmax(scale q kᵀ + bias) v over the
/// N tokens of every item, with q, k, v laid out per head as TinyViT's qkv Linear gives
/// them. Inputs: qkv (B, N, 3C) and the gathered bias table (heads, N, N); output
/// (B, N, C). The backward pass recomputes the probabilities, as `CpuAttention` does.
pub struct TableAttention {
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

impl TableAttention {
    /// (B, N) of a qkv input, once it and the table fit the op.
    fn dims(&self, qkv: &[usize], table: &[usize]) -> Result<(usize, usize)> {
        let c3 = 3 * self.heads * self.head_dim;
        let &[b, n, last] = qkv else {
            candle_core::bail!("table attention: qkv must be (B, N, 3C), got {qkv:?}");
        };
        if last != c3 || table != [self.heads, n, n] {
            candle_core::bail!(
                "table attention: qkv {qkv:?} and bias {table:?}, expected (B, N, {c3}) and ({}, N, N)",
                self.heads
            );
        }
        Ok((b, n))
    }

    fn spec<'a>(&self, n: usize, table: &'a [f32], table_grads: bool) -> Spec<'a> {
        Spec {
            grid: (1, n),
            heads: self.heads,
            head_dim: self.head_dim,
            scale: self.scale,
            rel: None,
            table: Some(table),
            layout: QkvLayout::PerHead,
            rel_grads: false,
            table_grads,
        }
    }
}

impl candle_core::CustomOp2 for TableAttention {
    fn name(&self) -> &'static str {
        "msa-table-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, n) = self.dims(l1.dims(), l2.dims())?;
        let qkv = storage_slice(s1, l1, "table attention")?;
        let table = storage_slice(s2, l2, "table attention")?;
        let (hd, c) = (self.head_dim, self.heads * self.head_dim);
        let op = |offset: usize| Operand {
            data: &qkv[offset..],
            row_stride: 3 * c,
            batch_stride: n * 3 * c,
            head_stride: 3 * hd,
        };
        let dims = Dims {
            b,
            nq: n,
            nk: n,
            heads: self.heads,
            head_dim: hd,
            grid: (1, n),
        };
        let out = attention_general(
            op(0),
            op(hd),
            op(2 * hd),
            dims,
            self.scale,
            Bias::Table(table),
        );
        Ok((CpuStorage::F32(out), Shape::from((b, n, c))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        table: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, n) = self.dims(qkv.dims(), table.dims())?;
        let grad = grad.contiguous()?;
        let grads = with_slice(qkv, |x| {
            with_slice(&grad, |dout| {
                with_slice(table, |t| {
                    Ok(attention_backward(
                        x,
                        dout,
                        b,
                        &self.spec(n, t, table.track_op()),
                    ))
                })
            })
        })?;
        let dtable = match grads.table {
            Some(g) => grad_like(g, table)?,
            None => None,
        };
        Ok((grad_like(grads.dqkv, qkv)?, dtable))
    }
}
