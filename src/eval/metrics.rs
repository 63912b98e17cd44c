//! Segmentation metrics on binary masks: Dice, IoU and HD95.

/// Dice = 2|A∩B| / (|A| + |B|); 1 when both are empty.
pub fn dice(pred: &[bool], target: &[bool]) -> f64 {
    let (inter, a, b) = counts(pred, target);
    if a + b == 0 {
        return 1.0;
    }
    2.0 * inter as f64 / (a + b) as f64
}

/// IoU = |A∩B| / |A∪B|; 1 when both are empty.
pub fn iou(pred: &[bool], target: &[bool]) -> f64 {
    let (inter, a, b) = counts(pred, target);
    let union = a + b - inter;
    if union == 0 {
        return 1.0;
    }
    inter as f64 / union as f64
}

fn counts(pred: &[bool], target: &[bool]) -> (usize, usize, usize) {
    assert_eq!(pred.len(), target.len(), "mask sizes differ");
    let mut inter = 0;
    let mut a = 0;
    let mut b = 0;
    for (&p, &t) in pred.iter().zip(target) {
        inter += (p && t) as usize;
        a += p as usize;
        b += t as usize;
    }
    (inter, a, b)
}

/// 95th percentile of the symmetric surface distance (the distances from each surface
/// voxel of A to the surface of B, and from B to A, pooled), in the units of `spacing`.
/// `dims` and `spacing` are per axis, slowest first: (h, w) for 2D, (d, h, w) for 3D.
/// None when either mask is empty: the distance is undefined there.
pub fn hd95(pred: &[bool], target: &[bool], dims: &[usize], spacing: &[f64]) -> Option<f64> {
    let sa = surface(pred, dims);
    let sb = surface(target, dims);
    if !sa.iter().any(|&s| s) || !sb.iter().any(|&s| s) {
        return None;
    }
    let da = squared_edt(&sb, dims, spacing);
    let db = squared_edt(&sa, dims, spacing);
    let mut d: Vec<f64> = sa
        .iter()
        .zip(&da)
        .filter(|(s, _)| **s)
        .map(|(_, v)| v.sqrt())
        .chain(
            sb.iter()
                .zip(&db)
                .filter(|(s, _)| **s)
                .map(|(_, v)| v.sqrt()),
        )
        .collect();
    d.sort_by(f64::total_cmp);
    Some(percentile(&d, 95.0))
}

/// Linear-interpolated percentile of sorted values (NumPy's default).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Foreground voxels with a background face-neighbour (or on the volume border).
pub fn surface(mask: &[bool], dims: &[usize]) -> Vec<bool> {
    let strides = strides(dims);
    let mut out = vec![false; mask.len()];
    for (i, &m) in mask.iter().enumerate() {
        if !m {
            continue;
        }
        let mut rest = i;
        out[i] = dims.iter().zip(&strides).any(|(&n, &s)| {
            let c = rest / s;
            rest %= s;
            c == 0 || c + 1 == n || !mask[i - s] || !mask[i + s]
        });
    }
    out
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for a in (0..dims.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * dims[a + 1];
    }
    s
}

/// Squared Euclidean distance to the nearest `true` voxel, separable over axes
/// (Felzenszwalb & Huttenlocher's lower envelope of parabolas).
fn squared_edt(seeds: &[bool], dims: &[usize], spacing: &[f64]) -> Vec<f64> {
    let mut f: Vec<f64> = seeds
        .iter()
        .map(|&s| if s { 0.0 } else { f64::INFINITY })
        .collect();
    let strides = strides(dims);
    for axis in 0..dims.len() {
        let (n, s, w) = (dims[axis], strides[axis], spacing[axis]);
        let lines = f.len() / n;
        let mut line = vec![0f64; n];
        for l in 0..lines {
            // Start of the l-th line along `axis`.
            let outer = l / s;
            let inner = l % s;
            let base = outer * s * n + inner;
            for (k, v) in line.iter_mut().enumerate() {
                *v = f[base + k * s];
            }
            let out = edt_1d(&line, w);
            for (k, v) in out.into_iter().enumerate() {
                f[base + k * s] = v;
            }
        }
    }
    f
}

fn edt_1d(f: &[f64], w: f64) -> Vec<f64> {
    let n = f.len();
    let mut d = vec![f64::INFINITY; n];
    let finite: Vec<usize> = (0..n).filter(|&q| f[q].is_finite()).collect();
    if finite.is_empty() {
        return d;
    }
    let pos = |q: usize| q as f64 * w;
    let mut v = vec![0usize; n];
    let mut z = vec![0f64; n + 1];
    let mut k = 0;
    v[0] = finite[0];
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for &q in &finite[1..] {
        loop {
            let p = v[k];
            let s =
                ((f[q] + pos(q) * pos(q)) - (f[p] + pos(p) * pos(p))) / (2.0 * (pos(q) - pos(p)));
            if s <= z[k] && k > 0 {
                k -= 1;
                continue;
            }
            if s <= z[k] {
                // k == 0: q dominates everywhere.
                v[0] = q;
                z[1] = f64::INFINITY;
                break;
            }
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f64::INFINITY;
            break;
        }
    }
    let mut k = 0;
    for (q, out) in d.iter_mut().enumerate() {
        while z[k + 1] < pos(q) {
            k += 1;
        }
        let dq = pos(q) - pos(v[k]);
        *out = dq * dq + f[v[k]];
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(h: usize, w: usize, y0: usize, x0: usize, y1: usize, x1: usize) -> Vec<bool> {
        (0..h * w)
            .map(|i| (y0..y1).contains(&(i / w)) && (x0..x1).contains(&(i % w)))
            .collect()
    }

    #[test]
    fn dice_and_iou_of_overlapping_squares() {
        let a = rect(20, 20, 0, 0, 10, 10);
        let b = rect(20, 20, 0, 5, 10, 15);
        assert!((dice(&a, &b) - 0.5).abs() < 1e-12);
        assert!((iou(&a, &b) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(dice(&a, &a), 1.0);
        let empty = vec![false; 400];
        assert_eq!(dice(&empty, &empty), 1.0);
        assert_eq!(dice(&a, &empty), 0.0);
    }

    #[test]
    fn hd95_of_shifted_squares_is_the_shift() {
        let a = rect(40, 40, 10, 10, 20, 20);
        let b = rect(40, 40, 10, 13, 20, 23);
        let d = hd95(&a, &b, &[40, 40], &[1.0, 1.0]).unwrap();
        assert!((d - 3.0).abs() < 1e-9, "{d}");
        // Spacing scales the distance along its axis.
        let d = hd95(&a, &b, &[40, 40], &[1.0, 0.5]).unwrap();
        assert!((d - 1.5).abs() < 1e-9, "{d}");
        assert_eq!(hd95(&a, &a, &[40, 40], &[1.0, 1.0]), Some(0.0));
        assert_eq!(hd95(&a, &vec![false; 1600], &[40, 40], &[1.0, 1.0]), None);
    }

    #[test]
    fn edt_matches_brute_force() {
        let (h, w) = (13, 17);
        let seeds: Vec<bool> = (0..h * w).map(|i| (i * 7919) % 23 == 0).collect();
        let got = squared_edt(&seeds, &[h, w], &[1.0, 2.0]);
        for (i, g) in got.iter().enumerate() {
            let (y, x) = ((i / w) as f64, (i % w) as f64 * 2.0);
            let want = (0..h * w)
                .filter(|&j| seeds[j])
                .map(|j| {
                    let (yy, xx) = ((j / w) as f64, (j % w) as f64 * 2.0);
                    (y - yy).powi(2) + (x - xx).powi(2)
                })
                .fold(f64::INFINITY, f64::min);
            assert!((g - want).abs() < 1e-9, "at {i}: {g} vs {want}");
        }
    }
}
