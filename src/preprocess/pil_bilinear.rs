//! PIL's antialiased bilinear resize on 8-bit RGB, which SAM's `ResizeLongestSide` uses
//! (MSA-SPEC 1.4): fixed-point weights, horizontal pass then vertical, 8-bit in between.

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index and fixed-point weights (PIL's `precompute_coeffs`).
fn coefficients(n_in: usize, n_out: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = n_in as f64 / n_out as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    (0..n_out)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filterscale).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|w| {
                    let k = if total != 0.0 { w / total } else { 0.0 };
                    let v = k * (1u32 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (v - 0.5) as i32
                    } else {
                        (v + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Antialiased bilinear resize, horizontal pass then vertical, 8-bit between passes.
pub fn resize_bilinear_aa(img: &RgbImage, nw: usize, nh: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let round = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if nw != w {
        let cx = coefficients(w, nw);
        let mut out = vec![0u8; h * nw * 3];
        for y in 0..h {
            for (x, (start, ks)) in cx.iter().enumerate() {
                for c in 0..3 {
                    let acc: i64 = ks
                        .iter()
                        .enumerate()
                        .map(|(i, &k)| src[(y * w + start + i) * 3 + c] as i64 * k as i64)
                        .sum();
                    out[(y * nw + x) * 3 + c] = clip8(acc + round);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    let vertical = if nh != h {
        let cy = coefficients(h, nh);
        let mut out = vec![0u8; nh * nw * 3];
        for (y, (start, ks)) in cy.iter().enumerate() {
            for x in 0..nw {
                for c in 0..3 {
                    let acc: i64 = ks
                        .iter()
                        .enumerate()
                        .map(|(i, &k)| horizontal[((start + i) * nw + x) * 3 + c] as i64 * k as i64)
                        .sum();
                    out[(y * nw + x) * 3 + c] = clip8(acc + round);
                }
            }
        }
        out
    } else {
        horizontal
    };
    RgbImage::from_raw(nw as u32, nh as u32, vertical).expect("nw*nh*3 values by construction")
}
