//! Resizing as matrices, with PyTorch's `F.interpolate` semantics (align_corners = false).
//!
//! A separable resize is `out = Ry · x · Rxᵀ`, so it runs as two matmuls and autograd
//! differentiates it for free (candle has no backward for its bilinear upsample).

use candle_core::{Device, Result, Tensor};

/// The (out x in) matrix of 1D linear interpolation.
pub fn linear_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    let scale = n_in as f64 / n_out as f64;
    for o in 0..n_out {
        let src = (scale * (o as f64 + 0.5) - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
        let l1 = src - i0 as f64;
        m[o * n_in + i0] += (1.0 - l1) as f32;
        m[o * n_in + i1] += l1 as f32;
    }
    m
}

/// The (out x in) matrix of 1D cubic convolution (A = -0.75, border samples repeated).
pub fn cubic_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let mut m = vec![0f32; n_out * n_in];
    let scale = n_in as f64 / n_out as f64;
    for o in 0..n_out {
        let src = scale * (o as f64 + 0.5) - 0.5;
        let base = src.floor();
        let t = src - base;
        let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, w) in weights.iter().enumerate() {
            let idx = (base as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[o * n_in + idx] += *w as f32;
        }
    }
    m
}

fn matrix(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
    Tensor::from_vec(values, (rows, cols), device)
}

/// Resizes the last two dims of `x` (.., h, w) to (out_h, out_w) with bilinear weights.
pub fn bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let rank = x.rank();
    let (h, w) = (x.dim(rank - 2)?, x.dim(rank - 1)?);
    let ry = matrix(linear_matrix(h, out_h), out_h, h, x.device())?;
    let rx = matrix(linear_matrix(w, out_w), out_w, w, x.device())?;
    apply_separable(x, &ry, &rx)
}

/// `ry · x · rxᵀ` over the last two dims of `x`.
pub fn apply_separable(x: &Tensor, ry: &Tensor, rx: &Tensor) -> Result<Tensor> {
    let rank = x.rank();
    let dims = x.dims().to_vec();
    let (h, w) = (dims[rank - 2], dims[rank - 1]);
    let lead: usize = dims[..rank - 2].iter().product();
    let (out_h, out_w) = (ry.dim(0)?, rx.dim(0)?);
    // Rows of every map at once: (lead*h, w) · rxᵀ -> (lead*h, out_w).
    let x = x.contiguous()?.reshape((lead * h, w))?.matmul(&rx.t()?)?;
    let x = x.reshape((lead, h, out_w))?;
    let x = ry
        .unsqueeze(0)?
        .broadcast_as((lead, out_h, h))?
        .contiguous()?
        .matmul(&x)?;
    let mut out_dims = dims[..rank - 2].to_vec();
    out_dims.extend([out_h, out_w]);
    x.reshape(out_dims)
}

/// Resizes a relative-position table (L, C) to (n, C) by linear interpolation over rows.
pub fn rel_pos_table(table: &Tensor, n: usize) -> Result<Tensor> {
    let l = table.dim(0)?;
    if l == n {
        return Ok(table.clone());
    }
    let m = matrix(linear_matrix(l, n), n, l, table.device())?;
    m.matmul(table)
}

/// Resizes an absolute position embedding (1, h, w, C) to (1, nh, nw, C), bicubic.
pub fn pos_embed(pos: &Tensor, nh: usize, nw: usize) -> Result<Tensor> {
    let (_, h, w, c) = pos.dims4()?;
    if (h, w) == (nh, nw) {
        return Ok(pos.clone());
    }
    let ry = matrix(cubic_matrix(h, nh), nh, h, pos.device())?;
    let rx = matrix(cubic_matrix(w, nw), nw, w, pos.device())?;
    let chw = pos.squeeze(0)?.permute((2, 0, 1))?; // (C, h, w)
    let out = apply_separable(&chw, &ry, &rx)?; // (C, nh, nw)
    out.permute((1, 2, 0))?
        .unsqueeze(0)?
        .contiguous()?
        .reshape((1, nh, nw, c))
}
