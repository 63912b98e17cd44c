//! SAM's decomposed relative-position bias written as extra columns of q and k, so that a
//! flash attention kernel without any bias computes SAM's biased attention exactly.
//!
//! For a query at (qy, qx) and a key at (ky, kx) of an h x w grid, SAM adds
//! `<q, Rh[qy, ky]> + <q, Rw[qx, kx]>` to `scale q.k`. Append to each query its h row terms
//! `rel_h[q, :]` and w column terms `rel_w[q, :]`, after `scale q`; append to each key the
//! one-hot indicators of its row and column. Then
//! `q'.k' = scale q.k + rel_h[q, ky] + rel_w[q, kx]`, and softmax(q' k'ᵀ) v (no scale) is
//! SAM's attention. Gradients flow through the construction to q and to the tables.

use candle_core::{DType, Result, Tensor, D};

/// (q', k') of width hd + h + w from q, k (BH, N, hd) on an h x w grid (tokens row-major)
/// and the gathered tables rh (h, h, hd), rw (w, w, hd).
pub fn bias_as_columns(
    q: &Tensor,
    k: &Tensor,
    rh: &Tensor,
    rw: &Tensor,
    (h, w): (usize, usize),
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let (bh, n, _) = q.dims3()?;
    let q_wide = Tensor::cat(&[(q * scale)?, rel_terms(q, rh, rw, (h, w))?], D::Minus1)?;
    let indicators = one_hot_positions((h, w), k.dtype(), k.device())?
        .unsqueeze(0)?
        .broadcast_as((bh, n, h + w))?;
    let k_wide = Tensor::cat(&[k.clone(), indicators.contiguous()?], D::Minus1)?;
    Ok((q_wide, k_wide))
}

/// Each query's bias terms (BH, N, h + w): its h row terms `<q, rh[qy, ky]>`, then its w
/// column terms `<q, rw[qx, kx]>`, from q (BH, N, hd) unscaled on an h x w grid. A key at
/// (ky, kx) adds the query's terms ky and h + kx to its score.
pub fn rel_terms(q: &Tensor, rh: &Tensor, rw: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    let (bh, n, hd) = q.dims3()?;
    if n != h * w {
        candle_core::bail!("{n} tokens are not an {h} x {w} grid");
    }
    let grid = q.reshape((bh, h, w, hd))?;
    // rel_h[b, qy, qx, ky] = <q[b, qy, qx], rh[qy, ky]>: one matrix product per query row.
    let by_row = grid.permute((1, 0, 2, 3))?.reshape((h, bh * w, hd))?;
    let rel_h = by_row
        .matmul(&rh.transpose(1, 2)?.contiguous()?)?
        .reshape((h, bh, w, h))?
        .permute((1, 0, 2, 3))?;
    // rel_w[b, qy, qx, kx] = <q[b, qy, qx], rw[qx, kx]>: one per query column.
    let by_col = grid.permute((2, 0, 1, 3))?.reshape((w, bh * h, hd))?;
    let rel_w = by_col
        .matmul(&rw.transpose(1, 2)?.contiguous()?)?
        .reshape((w, bh, h, w))?
        .permute((1, 2, 0, 3))?;
    Tensor::cat(
        &[rel_h.reshape((bh, n, h))?, rel_w.reshape((bh, n, w))?],
        D::Minus1,
    )
}

/// (N, h + w): token t's row one-hot, then its column one-hot.
fn one_hot_positions(
    (h, w): (usize, usize),
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let mut v = vec![0f32; h * w * (h + w)];
    for t in 0..h * w {
        let row = &mut v[t * (h + w)..(t + 1) * (h + w)];
        row[t / w] = 1.0;
        row[h + t % w] = 1.0;
    }
    Tensor::from_vec(v, (h * w, h + w), device)?.to_dtype(dtype)
}
