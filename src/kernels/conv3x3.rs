//! A 3x3 convolution with padding 1 on channels-last maps, for inference (SAM's neck).
//!
//! The input is copied once into a zero-bordered buffer whose rows are W + 2 pixels wide.
//! In that layout every tap reads the same rows at a fixed offset, so each tap is one
//! matmul over all output pixels; the two border columns each output row gets this way
//! are computed and dropped. candle's conv2d unfolds the input (9x its size) and
//! transposes between layouts.

use super::{gemm_into, par_filled, Mat};

/// x (B, H, W, C) values, `taps` (9, O, C) (tap ky * 3 + kx), optional bias (O) ->
/// (B, H, W, O).
pub fn conv3x3(
    x: &[f32],
    (b, h, w, c): (usize, usize, usize, usize),
    taps: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let o = taps.len() / (9 * c).max(1);
    let wp = w + 2;
    // One zero row above, one below, and one more so that the last tap's reads of the
    // dropped columns stay inside the buffer.
    let rows_p = h + 3;
    let padded = par_filled(b * rows_p * wp * c, wp * c, |r, dst| {
        let (bi, y) = (r / rows_p, r % rows_p);
        if (1..=h).contains(&y) {
            let src = &x[(bi * h + y - 1) * w * c..][..w * c];
            dst[c..(w + 1) * c].copy_from_slice(src);
        }
    });
    // Output in the padded-width layout: for each image and tap, one matmul over all of
    // the image's output rows.
    let mut wide = vec![0f32; b * h * wp * o];
    for bi in 0..b {
        let dst = &mut wide[bi * h * wp * o..(bi + 1) * h * wp * o];
        for (tap, wt) in taps.chunks_exact(o * c).enumerate() {
            let (ky, kx) = (tap / 3, tap % 3);
            let src = ((bi * rows_p + ky) * wp + kx) * c;
            // SAFETY: h * wp rows of c values from `src` stay inside `padded` (the extra
            // bottom row covers kx = 2 on the last row); dst is (h * wp) x o.
            unsafe {
                gemm_into(
                    (h * wp, o, c),
                    dst.as_mut_ptr(),
                    o,
                    tap > 0,
                    Mat::rows(padded.as_ptr().add(src), c),
                    Mat::rows(wt.as_ptr(), c).t(),
                    1.0,
                    true,
                );
            }
        }
    }
    par_filled(b * h * w * o, w * o, |r, dst| {
        dst.copy_from_slice(&wide[r * wp * o..][..w * o]);
        if let Some(bias) = bias {
            for px in dst.chunks_exact_mut(o) {
                for (v, &bv) in px.iter_mut().zip(bias) {
                    *v += bv;
                }
            }
        }
    })
}
