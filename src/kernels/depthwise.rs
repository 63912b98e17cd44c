//! Depthwise 2D convolution on channels-last maps, as one CPU op with its backward.
//! candle runs a grouped convolution as one convolution per group, which for TinyViT's
//! depthwise layers means hundreds of tiny convolutions per call.

use super::simd::{gelu_in_place, with_avx2};
use super::{grad_like, par_filled, storage_slice, with_slice};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Geometry of a square depthwise convolution with zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseGeometry {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl DepthwiseGeometry {
    pub fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1
    }

    /// The input index read by output `o` through tap `t`, if it is inside the image.
    fn input_index(&self, o: usize, t: usize, n: usize) -> Option<usize> {
        (o * self.stride + t)
            .checked_sub(self.padding)
            .filter(|&i| i < n)
    }

    /// The output index that reads input `i` through tap `t`, if any.
    fn output_index(&self, i: usize, t: usize, n_out: usize) -> Option<usize> {
        let pos = (i + self.padding).checked_sub(t)?;
        (pos.is_multiple_of(self.stride) && pos / self.stride < n_out).then_some(pos / self.stride)
    }
}

/// x (B, H, W, C), taps (k*k, C) tap-major, bias (C) -> (B, Ho, Wo, C).
pub struct DepthwiseConv(pub DepthwiseGeometry);

struct Dims {
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    ho: usize,
    wo: usize,
}

impl DepthwiseConv {
    fn dims(&self, x: &[usize]) -> Result<Dims> {
        let &[b, h, w, c] = x else {
            candle_core::bail!("depthwise conv expects (B, H, W, C), got {x:?}");
        };
        let g = self.0;
        Ok(Dims {
            b,
            h,
            w,
            c,
            ho: g.out_size(h),
            wo: g.out_size(w),
        })
    }

    /// `dims` of the input, once the taps are (k*k, C) and the bias (C).
    fn checked_dims(&self, x: &[usize], taps: &[usize], bias: &[usize]) -> Result<Dims> {
        let d = self.dims(x)?;
        let k = self.0.kernel;
        if taps != [k * k, d.c] || bias != [d.c] {
            candle_core::bail!(
                "depthwise conv: input {x:?} needs taps [{}, {}] and bias [{}], got {taps:?} and {bias:?}",
                k * k,
                d.c,
                d.c
            );
        }
        Ok(d)
    }

    fn forward(&self, x: &[f32], taps: &[f32], bias: &[f32], d: &Dims, gelu: bool) -> Vec<f32> {
        par_filled(d.b * d.ho * d.wo * d.c, d.wo * d.c, |row, dst| {
            let at = OutputRow { g: self.0, d, row };
            output_row(&at, x, taps, bias, dst);
            if gelu {
                gelu_in_place(dst);
            }
        })
    }

    /// d loss / d x: every input pixel gathers from the outputs that read it.
    fn grad_input(&self, grad: &[f32], taps: &[f32], d: &Dims) -> Vec<f32> {
        let g = self.0;
        let k = g.kernel;
        let mut gx = vec![0f32; d.b * d.h * d.w * d.c];
        gx.par_chunks_mut(d.w * d.c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (bi, iy) = (row / d.h, row % d.h);
                for (ix, gi) in dst.chunks_exact_mut(d.c).enumerate() {
                    for ky in 0..k {
                        let Some(oy) = g.output_index(iy, ky, d.ho) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(ox) = g.output_index(ix, kx, d.wo) else {
                                continue;
                            };
                            let go = &grad[((bi * d.ho + oy) * d.wo + ox) * d.c..][..d.c];
                            let wt = &taps[(ky * k + kx) * d.c..][..d.c];
                            for ((gi, &go), &w) in gi.iter_mut().zip(go).zip(wt) {
                                *gi += go * w;
                            }
                        }
                    }
                }
            });
        gx
    }

    /// d loss / d taps and d loss / d bias: per output row partial sums, then a reduction.
    fn grad_params(&self, grad: &[f32], x: &[f32], d: &Dims) -> (Vec<f32>, Vec<f32>) {
        let g = self.0;
        let k = g.kernel;
        let zero = || (vec![0f32; k * k * d.c], vec![0f32; d.c]);
        let rows = d.b * d.ho;
        super::ordered_reduce(
            rows,
            ROWS_PER_PARTIAL,
            zero,
            |(gw, gb), row| {
                let (bi, oy) = (row / d.ho, row % d.ho);
                for ox in 0..d.wo {
                    let go = &grad[((bi * d.ho + oy) * d.wo + ox) * d.c..][..d.c];
                    for (b, &v) in gb.iter_mut().zip(go) {
                        *b += v;
                    }
                    for ky in 0..k {
                        let Some(iy) = g.input_index(oy, ky, d.h) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(ix) = g.input_index(ox, kx, d.w) else {
                                continue;
                            };
                            let src = &x[((bi * d.h + iy) * d.w + ix) * d.c..][..d.c];
                            let gwt = &mut gw[(ky * k + kx) * d.c..][..d.c];
                            for ((gw, &s), &go) in gwt.iter_mut().zip(src).zip(go) {
                                *gw += s * go;
                            }
                        }
                    }
                }
            },
            |partial| partial,
            |(mut a, mut b), (c, e)| {
                a.iter_mut().zip(&c).for_each(|(a, c)| *a += c);
                b.iter_mut().zip(&e).for_each(|(b, e)| *b += e);
                (a, b)
            },
        )
        .unwrap_or_else(zero)
    }
}

/// Output rows summed into one partial gradient of the taps.
const ROWS_PER_PARTIAL: usize = 4;

impl CustomOp3 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "msa-depthwise-conv"
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
        let d = self.checked_dims(l1.dims(), l2.dims(), l3.dims())?;
        let x = storage_slice(s1, l1, "depthwise conv")?;
        let taps = storage_slice(s2, l2, "depthwise conv")?;
        let bias = storage_slice(s3, l3, "depthwise conv")?;
        let out = self.forward(x, taps, bias, &d, false);
        Ok((CpuStorage::F32(out), Shape::from((d.b, d.ho, d.wo, d.c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        taps: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.dims(x.dims())?;
        let grad = grad.contiguous()?;
        let gx = with_slice(&grad, |g| {
            with_slice(&taps.contiguous()?, |t| Ok(self.grad_input(g, t, &d)))
        })?;
        let gx = grad_like(gx, x)?;
        if !taps.track_op() && !bias.track_op() {
            return Ok((gx, None, None));
        }
        let (gw, gb) = with_slice(&grad, |g| {
            with_slice(&x.contiguous()?, |xs| Ok(self.grad_params(g, xs, &d)))
        })?;
        Ok((gx, grad_like(gw, taps)?, grad_like(gb, bias)?))
    }
}

/// One output row (image `row / ho`, line `row % ho`) of a depthwise convolution.
struct OutputRow<'a> {
    g: DepthwiseGeometry,
    d: &'a Dims,
    row: usize,
}

fn output_row(at: &OutputRow, x: &[f32], taps: &[f32], bias: &[f32], dst: &mut [f32]) {
    with_avx2!(output_row_avx2, output_row_body, at, x, taps, bias, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_row_avx2(at: &OutputRow, x: &[f32], taps: &[f32], bias: &[f32], dst: &mut [f32]) {
    output_row_body(at, x, taps, bias, dst)
}

#[inline(always)]
fn output_row_body(at: &OutputRow, x: &[f32], taps: &[f32], bias: &[f32], dst: &mut [f32]) {
    let (g, d) = (at.g, at.d);
    let k = g.kernel;
    let (bi, oy) = (at.row / d.ho, at.row % d.ho);
    for (ox, o) in dst.chunks_exact_mut(d.c).enumerate() {
        o.copy_from_slice(bias);
        for ky in 0..k {
            let Some(iy) = g.input_index(oy, ky, d.h) else {
                continue;
            };
            for kx in 0..k {
                let Some(ix) = g.input_index(ox, kx, d.w) else {
                    continue;
                };
                let src = &x[((bi * d.h + iy) * d.w + ix) * d.c..][..d.c];
                let wt = &taps[(ky * k + kx) * d.c..][..d.c];
                for ((o, &s), &w) in o.iter_mut().zip(src).zip(wt) {
                    *o += s * w;
                }
            }
        }
    }
}

/// Inference: the convolution, with GELU applied to its output when `gelu`, for a
/// contiguous (B, H, W, C) map and tap-major (k*k, C) taps.
pub fn depthwise_forward(
    x: &Tensor,
    taps: &Tensor,
    bias: &Tensor,
    g: DepthwiseGeometry,
    gelu: bool,
) -> Result<Tensor> {
    let op = DepthwiseConv(g);
    let d = op.checked_dims(x.dims(), taps.dims(), bias.dims())?;
    let out = with_slice(x, |xs| {
        with_slice(taps, |t| {
            with_slice(bias, |b| Ok(op.forward(xs, t, b, &d, gelu)))
        })
    })?;
    Tensor::from_vec(out, (d.b, d.ho, d.wo, d.c), x.device())
}

/// The same convolution from candle's ops (any device, any float type): per tap, a strided
/// view of the zero-padded input times the tap's weights.
pub fn depthwise_conv_ops(
    x: &Tensor,
    taps: &Tensor,
    bias: &Tensor,
    g: DepthwiseGeometry,
) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (ho, wo) = (g.out_size(h), g.out_size(w));
    let (k, s, p) = (g.kernel, g.stride, g.padding);
    // Pad so that every tap can take ho * s rows and wo * s columns.
    let (need_h, need_w) = (k - 1 + ho * s, k - 1 + wo * s);
    let xp = x
        .pad_with_zeros(1, p, need_h.saturating_sub(h + p))?
        .pad_with_zeros(2, p, need_w.saturating_sub(w + p))?;
    let mut out = bias.reshape((1, 1, 1, c))?.broadcast_as((b, ho, wo, c))?;
    for ky in 0..k {
        for kx in 0..k {
            let view = xp
                .narrow(1, ky, ho * s)?
                .narrow(2, kx, wo * s)?
                .reshape((b, ho, s, wo, s, c))?
                .narrow(2, 0, 1)?
                .narrow(4, 0, 1)?
                .reshape((b, ho, wo, c))?;
            let tap = taps.narrow(0, ky * k + kx, 1)?.reshape((1, 1, 1, c))?;
            out = (out + view.broadcast_mul(&tap)?)?;
        }
    }
    Ok(out)
}
