//! Fused multi-head attention with decomposed relative-position bias on CPU: inference, and
//! the forward pass of the training op in `attention::cpu_backward`.
//!
//! Works on the qkv projection as it comes out of the Linear layer, (B, N, 3, heads, hd)
//! token-major, and writes (B, N, heads*hd), the layout `proj` takes. Each task handles a
//! block of query rows of one head: logits for the block live in a small buffer, get the
//! bias and softmax in place, and are multiplied by V right away, so the N x N logits of
//! a head never exist in memory at once.

use crate::kernels::simd::{dot_body, softmax_row_body};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Query rows per task for global attention: a 64 x 4096 block is 1 MiB.
pub(crate) const ROW_BLOCK: usize = 64;

pub struct RelTables<'a> {
    /// (H, H, hd): Rh[qy, ky, :]
    pub rh: &'a [f32],
    /// (W, W, hd): Rw[qx, kx, :]
    pub rw: &'a [f32],
}

#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: tasks write disjoint (row block, head) regions of the output.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// A (B, N, heads, hd) operand inside a larger buffer: head h of token t of batch b starts
/// at `b * batch_stride + t * row_stride + h * head_stride`.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub batch_stride: usize,
    pub head_stride: usize,
}

/// What is added to the scaled logits before the softmax.
#[derive(Clone, Copy)]
pub enum Bias<'a> {
    None,
    /// SAM's decomposed relative-position bias.
    Rel(&'a RelTables<'a>),
    /// A full (heads, nq, nk) table, the same for every batch item (TinyViT).
    Table(&'a [f32]),
}

/// `qkv`: B x (H*W) x 3C values; returns B x (H*W) x C.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &[f32],
    b: usize,
    (h, w): (usize, usize),
    heads: usize,
    head_dim: usize,
    scale: f32,
    rel: Option<RelTables>,
) -> Vec<f32> {
    let n = h * w;
    let c = heads * head_dim;
    assert_eq!(qkv.len(), b * n * 3 * c, "qkv buffer size");
    let op = |offset: usize| Operand {
        data: &qkv[offset..],
        row_stride: 3 * c,
        batch_stride: n * 3 * c,
        head_stride: head_dim,
    };
    let dims = Dims {
        b,
        nq: n,
        nk: n,
        heads,
        head_dim,
        grid: (h, w),
    };
    let bias = match &rel {
        Some(t) => Bias::Rel(t),
        None => Bias::None,
    };
    attention_general(op(0), op(c), op(2 * c), dims, scale, bias)
}

/// Sizes of one attention call.
#[derive(Clone, Copy)]
pub struct Dims {
    pub b: usize,
    pub nq: usize,
    pub nk: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Query grid (H, W) for the relative-position bias (nq = nk = H*W then).
    pub grid: (usize, usize),
}

/// softmax(scale q kᵀ [+ bias]) v for every batch item and head; returns (B, nq, heads*hd).
pub fn attention_general(
    q: Operand,
    k: Operand,
    v: Operand,
    d: Dims,
    scale: f32,
    bias: Bias,
) -> Vec<f32> {
    let (n, nk, heads, head_dim) = (d.nq, d.nk, d.heads, d.head_dim);
    let c = heads * head_dim;
    if nk <= FEW_KEYS && matches!(bias, Bias::None) {
        return attention_few_keys(q, k, v, d, scale);
    }
    let mut out = vec![0f32; d.b * n * c];
    let shared = SharedOut(out.as_mut_ptr());
    let block = if n > 2 * ROW_BLOCK { ROW_BLOCK } else { n };
    let blocks_per_head = n.div_ceil(block);
    let tasks = d.b * heads * blocks_per_head;
    let (h, w) = d.grid;
    (0..tasks).into_par_iter().for_each_init(
        || (vec![0f32; block * nk], vec![0f32; h + w]),
        |(logits, rel_bias), task| {
            let bi = task / (heads * blocks_per_head);
            let head = (task / blocks_per_head) % heads;
            let r0 = (task % blocks_per_head) * block;
            let rows = block.min(n - r0);
            let at = |o: &Operand<'_>| bi * o.batch_stride + head * o.head_stride;
            let (qh, kh, vh) = (&q.data[at(&q)..], &k.data[at(&k)..], &v.data[at(&v)..]);
            let logits = &mut logits[..rows * nk];
            // SAFETY: the strides walk rows inside the operands, and `logits` holds
            // rows x nk values.
            unsafe {
                gemm(
                    rows,
                    nk,
                    head_dim,
                    logits.as_mut_ptr(),
                    1,
                    nk as isize,
                    false,
                    qh.as_ptr().add(r0 * q.row_stride),
                    1,
                    q.row_stride as isize,
                    kh.as_ptr(),
                    k.row_stride as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            let ctx = RowCtx {
                q: qh,
                stride: q.row_stride,
                head_dim,
                hw: d.grid,
                nk,
                bias: bias.for_head(head, n, nk),
            };
            finish_rows(logits, r0, &ctx, rel_bias);
            let dst = shared;
            // SAFETY: this task alone writes rows r0..r0+rows, columns of `head`.
            unsafe {
                gemm(
                    rows,
                    head_dim,
                    nk,
                    dst.0.add(bi * n * c + r0 * c + head * head_dim),
                    1,
                    c as isize,
                    false,
                    logits.as_ptr(),
                    1,
                    nk as isize,
                    vh.as_ptr(),
                    1,
                    v.row_stride as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        },
    );
    out
}

impl<'a> Bias<'a> {
    /// The bias one head sees: a table is cut to that head's (nq, nk) block.
    pub(crate) fn for_head(self, head: usize, nq: usize, nk: usize) -> Bias<'a> {
        match self {
            Bias::Table(t) => Bias::Table(&t[head * nq * nk..(head + 1) * nq * nk]),
            other => other,
        }
    }
}

/// Up to this many keys (and without a bias), `attention_few_keys` runs instead of two
/// gemm calls per block: the decoder's image->token attention has 4096 queries and 5-10
/// keys, where the calls' fixed cost outweighs their work.
const FEW_KEYS: usize = 16;

/// `attention_general` for at most `FEW_KEYS` keys and no bias: each task gathers its
/// batch item's keys transposed, (head, hd, FEW_KEYS), so that one query's logits against
/// every key are `hd` vector multiply-adds.
fn attention_few_keys(q: Operand, k: Operand, v: Operand, d: Dims, scale: f32) -> Vec<f32> {
    let (n, heads, hd) = (d.nq, d.heads, d.head_dim);
    let c = heads * hd;
    let rows_per_chunk = 256;
    let mut out = vec![0f32; d.b * n * c];
    out.par_chunks_mut(n * c)
        .enumerate()
        .for_each(|(bi, item)| {
            item.par_chunks_mut(rows_per_chunk * c)
                .enumerate()
                .for_each(|(t, out)| {
                    let task = FewKeys {
                        q,
                        k,
                        v,
                        d,
                        scale,
                        bi,
                        r0: t * rows_per_chunk,
                    };
                    crate::kernels::simd::with_avx2!(few_keys_rows_avx2, few_keys_rows, &task, out)
                })
        });
    out
}

/// One task of `attention_few_keys`: rows r0.. of batch item bi.
struct FewKeys<'a> {
    q: Operand<'a>,
    k: Operand<'a>,
    v: Operand<'a>,
    d: Dims,
    scale: f32,
    bi: usize,
    r0: usize,
}

impl FewKeys<'_> {
    fn at<'b>(&self, o: &Operand<'b>, token: usize, head: usize) -> &'b [f32] {
        let s = self.bi * o.batch_stride + token * o.row_stride + head * o.head_stride;
        &o.data[s..s + self.d.head_dim]
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn few_keys_rows_avx2(task: &FewKeys, out: &mut [f32]) {
    few_keys_rows(task, out)
}

#[inline(always)]
fn few_keys_rows(task: &FewKeys, out: &mut [f32]) {
    let (nk, heads, hd) = (task.d.nk, task.d.heads, task.d.head_dim);
    let c = heads * hd;
    // kt[(head * hd + e) * FEW_KEYS + j] = k[j][head][e]; absent keys stay 0.
    let mut kt = vec![0f32; heads * hd * FEW_KEYS];
    for head in 0..heads {
        for j in 0..nk {
            for (e, &kv) in task.at(&task.k, j, head).iter().enumerate() {
                kt[(head * hd + e) * FEW_KEYS + j] = kv;
            }
        }
    }
    for (r, out_row) in out.chunks_exact_mut(c).enumerate() {
        let token = task.r0 + r;
        for head in 0..heads {
            let qv = task.at(&task.q, token, head);
            let mut l = [0f32; FEW_KEYS];
            for (e, &qe) in qv.iter().enumerate() {
                let col = &kt[(head * hd + e) * FEW_KEYS..][..FEW_KEYS];
                for (l, &kv) in l.iter_mut().zip(col) {
                    *l += qe * kv;
                }
            }
            let mut max = f32::NEG_INFINITY;
            for &v in &l[..nk] {
                max = max.max(v * task.scale);
            }
            let mut sum = 0.0;
            for (j, l) in l.iter_mut().enumerate() {
                *l = if j < nk {
                    crate::kernels::simd::exp_approx(*l * task.scale - max)
                } else {
                    0.0
                };
                sum += *l;
            }
            let o = &mut out_row[head * hd..(head + 1) * hd];
            for (j, &p) in l[..nk].iter().enumerate() {
                let p = p / sum;
                for (o, &vv) in o.iter_mut().zip(task.at(&task.v, j, head)) {
                    *o += p * vv;
                }
            }
        }
    }
}

pub(crate) struct RowCtx<'a> {
    /// This head's q at token 0; token t starts at t * stride.
    pub q: &'a [f32],
    pub stride: usize,
    pub head_dim: usize,
    pub hw: (usize, usize),
    pub nk: usize,
    /// This head's bias (a table already cut by `Bias::for_head`).
    pub bias: Bias<'a>,
}

/// Relative-position bias and softmax for every row of a logits block.
pub(crate) fn finish_rows(logits: &mut [f32], r0: usize, ctx: &RowCtx, bias: &mut [f32]) {
    crate::kernels::simd::with_avx2!(finish_rows_avx2, finish_rows_body, logits, r0, ctx, bias)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn finish_rows_avx2(logits: &mut [f32], r0: usize, ctx: &RowCtx, bias: &mut [f32]) {
    finish_rows_body(logits, r0, ctx, bias)
}

#[inline(always)]
fn finish_rows_body(logits: &mut [f32], r0: usize, ctx: &RowCtx, bias: &mut [f32]) {
    let (h, w) = ctx.hw;
    let hd = ctx.head_dim;
    for (r, row) in logits.chunks_exact_mut(ctx.nk).enumerate() {
        if let Bias::Table(t) = ctx.bias {
            let at = (r0 + r) * ctx.nk;
            for (v, &b) in row.iter_mut().zip(&t[at..at + ctx.nk]) {
                *v += b;
            }
        }
        if let Bias::Rel(t) = ctx.bias {
            let token = r0 + r;
            let q = &ctx.q[token * ctx.stride..token * ctx.stride + hd];
            let (qy, qx) = (token / w, token % w);
            // row[ky*w + kx] += <q, Rh[qy, ky]> + <q, Rw[qx, kx]>
            let (bh, bw) = bias.split_at_mut(h);
            for (ky, out) in bh.iter_mut().enumerate() {
                let off = (qy * h + ky) * hd;
                *out = dot_body(q, &t.rh[off..off + hd]);
            }
            for (kx, out) in bw.iter_mut().enumerate() {
                let off = (qx * w + kx) * hd;
                *out = dot_body(q, &t.rw[off..off + hd]);
            }
            for (ky, seg) in row.chunks_exact_mut(w).enumerate() {
                let vh = bh[ky];
                for (v, &vw) in seg.iter_mut().zip(bw.iter()) {
                    *v += vh + vw;
                }
            }
        }
        softmax_row_body(row);
    }
}
