//! The depth branch's token layouts (MSA-SPEC 2.2): the slices of a volume chunk as
//! tokens of one sequence per spatial position, and back.

use candle_core::{Result, Tensor};

/// (volumes * D, H, W, C) slices ->
/// (volumes * H * W, D, C), the D slice tokens of each spatial position together.
pub fn slices_to_depth_tokens(x: &Tensor, d: usize) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    if d == 0 || n % d != 0 {
        candle_core::bail!("{n} slices are not a whole number of {d}-slice volumes");
    }
    x.reshape((n / d, d, h, w, c))?
        .permute((0, 2, 3, 1, 4))?
        .contiguous()?
        .reshape((n / d * h * w, d, c))
}

/// The inverse of `slices_to_depth_tokens`, back to the slices' (N, H, W, C) shape.
pub fn depth_tokens_to_slices(
    t: &Tensor,
    (n, h, w, c): (usize, usize, usize, usize),
) -> Result<Tensor> {
    let d = t.dim(1)?;
    t.reshape((n / d, h, w, d, c))?
        .permute((0, 3, 1, 2, 4))?
        .contiguous()?
        .reshape((n, h, w, c))
}

/// The factor pair (a, b) of n with a <= b and a as large as possible.
pub fn closest_factors(n: usize) -> (usize, usize) {
    let mut a = (n as f64).sqrt() as usize;
    while a > 1 && !n.is_multiple_of(a) {
        a -= 1;
    }
    let a = a.max(1);
    (a, n / a)
}
