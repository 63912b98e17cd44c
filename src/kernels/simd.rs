//! Row operations written so that LLVM vectorises them, compiled twice: once for AVX2+FMA
//! (picked at run time) and once for the baseline target.

/// exp(x) for x <= 88 (Cephes' polynomial, about 1 ulp), branch-free so that it vectorises.
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5e-1;
    let y = p * z + r + 1.0;
    // n as an integer without a (scalar, saturating) float-to-int cast: adding 1.5 * 2^23
    // puts the integer in the low mantissa bits.
    let ni = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000) as i32;
    y * f32::from_bits(((ni + 127) as u32) << 23)
}

/// Reductions keep eight partial results so that the loops vectorise without
/// reassociation flags.
#[inline(always)]
fn lanes_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    tail.iter()
        .chain(acc.iter())
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

#[inline(always)]
pub(crate) fn lanes_sum(row: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

#[inline(always)]
pub(crate) fn softmax_row_body(row: &mut [f32]) {
    let max = lanes_max(row);
    for v in row.iter_mut() {
        *v = exp_approx(*v - max);
    }
    let inv = 1.0 / lanes_sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(row: &mut [f32]) {
    softmax_row_body(row)
}

/// Calls the AVX2+FMA build of a kernel where the CPU has those features, else the
/// baseline build of the same body.
macro_rules! with_avx2 {
    ($avx2:path, $baseline:path, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function was compiled for.
                return unsafe { $avx2($($arg),*) };
            }
        }
        $baseline($($arg),*)
    }};
}
pub(crate) use with_avx2;

/// In-place softmax of one row.
pub fn softmax_row(row: &mut [f32]) {
    with_avx2!(softmax_row_avx2, softmax_row_body, row)
}

#[inline(always)]
pub(crate) fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums so that the loop vectorises without reassociation flags.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut worst = 0f32;
        for i in 0..20000 {
            let x = -87.0 + i as f32 * (87.0 / 20000.0);
            let rel = ((exp_approx(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin() * 5.0).collect();
        let expect: Vec<f32> = {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        softmax_row(&mut row);
        for (a, b) in row.iter().zip(&expect) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}

/// erf(x), Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), branch-free.
#[inline(always)]
fn erf_approx(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    let y = 1.0 - poly * exp_approx(-ax * ax);
    y.copysign(x)
}

#[inline(always)]
fn gelu_body(xs: &mut [f32]) {
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    for v in xs.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf_approx(*v * FRAC_1_SQRT_2));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(xs: &mut [f32]) {
    gelu_body(xs)
}

/// In-place GELU (erf form), as PyTorch's `nn.GELU()`.
pub fn gelu_in_place(xs: &mut [f32]) {
    with_avx2!(gelu_avx2, gelu_body, xs)
}

/// g ← g · GELU'(x), with GELU'(x) = Φ(x) + x φ(x).
#[inline(always)]
fn gelu_grad_body(g: &mut [f32], xs: &[f32]) {
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    // 1 / sqrt(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for (g, &x) in g.iter_mut().zip(xs) {
        let cdf = 0.5 * (1.0 + erf_approx(x * FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * exp_approx(-0.5 * x * x);
        *g *= cdf + x * pdf;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_grad_avx2(g: &mut [f32], xs: &[f32]) {
    gelu_grad_body(g, xs)
}

/// Multiplies an output gradient by the GELU derivative at the input, in place.
pub fn gelu_grad_in_place(g: &mut [f32], xs: &[f32]) {
    with_avx2!(gelu_grad_avx2, gelu_grad_body, g, xs)
}

#[cfg(test)]
mod gelu_tests {
    use super::*;

    #[test]
    fn gelu_matches_the_erf_definition() {
        let xs: Vec<f32> = (0..4001).map(|i| -10.0 + i as f32 * 0.005).collect();
        let mut ours = xs.clone();
        gelu_in_place(&mut ours);
        for (x, y) in xs.iter().zip(&ours) {
            let exact = 0.5 * *x as f64 * (1.0 + libm_erf(*x as f64 / std::f64::consts::SQRT_2));
            assert!(
                (*y as f64 - exact).abs() < 2e-6,
                "gelu({x}) = {y}, expected {exact}"
            );
        }
    }

    #[test]
    fn gelu_grad_matches_finite_differences() {
        let xs: Vec<f32> = (0..2001).map(|i| -6.0 + i as f32 * 0.006).collect();
        let mut g = vec![1f32; xs.len()];
        gelu_grad_in_place(&mut g, &xs);
        let gelu = |x: f64| 0.5 * x * (1.0 + libm_erf(x / std::f64::consts::SQRT_2));
        for (x, d) in xs.iter().zip(&g) {
            let (x, e) = (*x as f64, 1e-4);
            let fd = (gelu(x + e) - gelu(x - e)) / (2.0 * e);
            assert!(
                (*d as f64 - fd).abs() < 1e-5,
                "gelu'({x}) = {d}, expected {fd}"
            );
        }
    }

    /// erf by its Taylor series / continued fraction in f64, as a reference.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 5.0 {
            return x.signum();
        }
        let mut sum = 0.0f64;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 5.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
