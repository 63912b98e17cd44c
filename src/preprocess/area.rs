//! Float resampling as LiteMedSAM's preprocessing does it (MSA-SPEC 1.6): shrinking takes
//! the exact area-weighted mean of the input pixels under each output pixel (OpenCV's
//! INTER_AREA, fractional pixels included); enlarging is bilinear with align_corners
//! false. Both are separable, so each axis is a short list of (input index, weight) per
//! output pixel.

/// Per output index, the input indices and weights that make it.
pub type Taps = Vec<Vec<(usize, f32)>>;

/// Area weights for shrinking `n_in` to `n_out` (n_out <= n_in).
pub fn area_taps(n_in: usize, n_out: usize) -> Taps {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let f0 = o as f64 * scale;
            let f1 = f0 + scale;
            let cell = scale.min(n_in as f64 - f0);
            let (i0, i1) = (f0.ceil() as usize, (f1.floor() as usize).min(n_in));
            let mut taps = vec![];
            if i0 as f64 - f0 > 1e-3 {
                taps.push((i0 - 1, ((i0 as f64 - f0) / cell) as f32));
            }
            for i in i0..i1 {
                taps.push((i, (1.0 / cell) as f32));
            }
            if f1 - i1 as f64 > 1e-3 && i1 < n_in {
                taps.push((i1, ((f1 - i1 as f64).min(1.0).min(cell) / cell) as f32));
            }
            taps
        })
        .collect()
}

/// Bilinear weights (align_corners false, no antialiasing) for any `n_in` -> `n_out`.
pub fn bilinear_taps(n_in: usize, n_out: usize) -> Taps {
    let m = crate::resize::linear_matrix(n_in, n_out);
    (0..n_out)
        .map(|o| {
            (0..n_in)
                .filter_map(|i| {
                    let w = m[o * n_in + i];
                    (w != 0.0).then_some((i, w))
                })
                .collect()
        })
        .collect()
}

/// LiteMedSAM's choice: area when shrinking, bilinear otherwise.
pub fn lite_taps(n_in: usize, n_out: usize) -> Taps {
    if n_out < n_in {
        area_taps(n_in, n_out)
    } else {
        bilinear_taps(n_in, n_out)
    }
}

/// Resamples a (C, H, W) plane stack to (C, nh, nw): columns first, then rows.
pub fn resample(x: &[f32], c: usize, (h, w): (usize, usize), ty: &Taps, tx: &Taps) -> Vec<f32> {
    let nw = tx.len();
    let nh = ty.len();
    let mut rows = vec![0f32; c * h * nw];
    for (src, dst) in x.chunks_exact(w).zip(rows.chunks_exact_mut(nw)) {
        for (d, taps) in dst.iter_mut().zip(tx) {
            *d = taps.iter().map(|&(i, k)| src[i] * k).sum();
        }
    }
    let mut out = vec![0f32; c * nh * nw];
    for ch in 0..c {
        let plane = &rows[ch * h * nw..(ch + 1) * h * nw];
        for (y, taps) in ty.iter().enumerate() {
            let dst = &mut out[(ch * nh + y) * nw..(ch * nh + y + 1) * nw];
            for &(i, k) in taps {
                for (d, &s) in dst.iter_mut().zip(&plane[i * nw..(i + 1) * nw]) {
                    *d += s * k;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_weights_sum_to_one_and_cover_fractions() {
        // 5 -> 2: each output covers 2.5 inputs, the middle one shared half and half.
        let t = area_taps(5, 2);
        assert_eq!(t[0], vec![(0, 0.4), (1, 0.4), (2, 0.2)]);
        assert_eq!(t[1], vec![(2, 0.2), (3, 0.4), (4, 0.4)]);
        for (n_in, n_out) in [(512, 256), (300, 256), (386, 186), (7, 3)] {
            for taps in area_taps(n_in, n_out) {
                let s: f32 = taps.iter().map(|t| t.1).sum();
                assert!((s - 1.0).abs() < 1e-5, "{n_in}->{n_out}: {s}");
            }
        }
    }

    #[test]
    fn integer_factor_area_is_the_block_mean() {
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = resample(&x, 1, (4, 4), &area_taps(4, 2), &area_taps(4, 2));
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
    }
}
