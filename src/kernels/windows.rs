//! SAM's window partition (zero-padding to a multiple of the window) and its inverse
//! (cropping the padding) as single-copy CPU ops, each the other's backward. The composed
//! version pads by concatenation, permutes, copies and crops, and its backward makes a
//! zero-filled tensor for every crop. `FilledWindowPartition` pads with a given token
//! instead of zeros and returns that token's gradient too.

use super::{grad_like, storage_slice, with_slice};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Window rows summed into one partial sum of the padding's gradient.
const ROWS_PER_GROUP: usize = 64;

/// An image of (H, W) tokens of C channels, cut into windows of ws x ws.
#[derive(Clone, Copy, Debug)]
pub struct Windows {
    pub hw: (usize, usize),
    pub ws: usize,
}

impl Windows {
    /// Windows down and across.
    fn grid(&self) -> (usize, usize) {
        (self.hw.0.div_ceil(self.ws), self.hw.1.div_ceil(self.ws))
    }

    fn windowed_shape(&self, b: usize, c: usize) -> Shape {
        let (gh, gw) = self.grid();
        Shape::from((b * gh * gw, self.ws, self.ws, c))
    }

    /// (B, H, W, C) values -> (B * windows, ws, ws, C), with `fill` (C values, else
    /// zeros) where the padding is.
    pub fn partition(&self, x: &[f32], c: usize, fill: Option<&[f32]>) -> Vec<f32> {
        let (h, w) = self.hw;
        let ws = self.ws;
        let (gh, gw) = self.grid();
        let b = x.len() / (h * w * c).max(1);
        let mut out = vec![0f32; b * gh * gw * ws * ws * c];
        // One chunk is one row of one window.
        out.par_chunks_mut(ws * c).enumerate().for_each(|(r, dst)| {
            let (win, y) = (r / ws, r % ws);
            let (bi, wy, wx) = (win / (gh * gw), (win / gw) % gh, win % gw);
            let sy = wy * ws + y;
            let x0 = wx * ws;
            let cols = if sy < h { ws.min(w - x0) } else { 0 };
            if cols > 0 {
                let src = ((bi * h + sy) * w + x0) * c;
                dst[..cols * c].copy_from_slice(&x[src..src + cols * c]);
            }
            if let Some(fill) = fill {
                for token in dst[cols * c..].chunks_exact_mut(c) {
                    token.copy_from_slice(fill);
                }
            }
        });
        out
    }

    /// (B * windows, ws, ws, C) values -> (B, H, W, C), dropping the padding.
    pub fn unpartition(&self, windows: &[f32], c: usize) -> Vec<f32> {
        let (h, w) = self.hw;
        let ws = self.ws;
        let (gh, gw) = self.grid();
        let b = windows.len() / (gh * gw * ws * ws * c).max(1);
        let mut out = vec![0f32; b * h * w * c];
        // One chunk is one row of the image.
        out.par_chunks_mut(w * c).enumerate().for_each(|(r, dst)| {
            let (bi, y) = (r / h, r % h);
            let (wy, ly) = (y / ws, y % ws);
            for wx in 0..gw {
                let x0 = wx * ws;
                let cols = ws.min(w - x0);
                let win = (bi * gh + wy) * gw + wx;
                let src = (win * ws + ly) * ws * c;
                dst[x0 * c..(x0 + cols) * c].copy_from_slice(&windows[src..src + cols * c]);
            }
        });
        out
    }

    /// Σ over the padding tokens of (B * windows, ws, ws, C) values: C sums, over groups
    /// of window rows added in a fixed order (`ordered_reduce`), so that the fill's
    /// gradient has the same bits on any thread count.
    pub fn padding_sum(&self, windows: &[f32], c: usize) -> Vec<f32> {
        if c == 0 {
            return vec![];
        }
        let (h, w) = self.hw;
        let ws = self.ws;
        let (gh, gw) = self.grid();
        let row_len = ws * c;
        // One task is one row of one window, as in `partition`.
        let row = |acc: &mut Vec<f32>, r: usize| {
            let (win, y) = (r / ws, r % ws);
            let (wy, wx) = ((win / gw) % gh, win % gw);
            let cols = if wy * ws + y < h {
                ws.min(w - wx * ws)
            } else {
                0
            };
            for token in windows[r * row_len + cols * c..(r + 1) * row_len].chunks_exact(c) {
                acc.iter_mut().zip(token).for_each(|(a, v)| *a += v);
            }
        };
        let add = |mut a: Vec<f32>, b: Vec<f32>| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        };
        let rows = windows.len() / row_len.max(1);
        super::ordered_reduce(rows, ROWS_PER_GROUP, || vec![0f32; c], row, |s| s, add)
            .unwrap_or_else(|| vec![0f32; c])
    }

    fn check(&self, dims: &[usize], windowed: bool) -> Result<(usize, usize)> {
        let (h, w) = self.hw;
        let (gh, gw) = self.grid();
        let (n, c) = match dims {
            [n, a, b, c] if windowed && (*a, *b) == (self.ws, self.ws) => (*n, *c),
            [n, a, b, c] if !windowed && (*a, *b) == (h, w) => (*n, *c),
            _ => candle_core::bail!(
                "window op: got shape {dims:?}, expected (B, {}, {}, C)",
                if windowed { self.ws } else { h },
                if windowed { self.ws } else { w }
            ),
        };
        if windowed && n % (gh * gw) != 0 {
            candle_core::bail!("window op: {n} windows is not a multiple of {}", gh * gw);
        }
        let b = if windowed { n / (gh * gw) } else { n };
        Ok((b, c))
    }
}

/// (B, H, W, C) -> (B * windows, ws, ws, C), zeros in the padding.
pub struct WindowPartition(pub Windows);

/// (B, H, W, C) and a (C) fill token -> (B * windows, ws, ws, C), the fill in the padding.
pub struct FilledWindowPartition(pub Windows);

/// (B * windows, ws, ws, C) -> (B, H, W, C).
pub struct WindowUnpartition(pub Windows);

impl CustomOp1 for WindowPartition {
    fn name(&self) -> &'static str {
        "msa-window-partition"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c) = self.0.check(layout.dims(), false)?;
        let x = storage_slice(storage, layout, "window partition")?;
        let out = self.0.partition(x, c, None);
        Ok((CpuStorage::F32(out), self.0.windowed_shape(b, c)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let c = arg.dim(3)?;
        let dx = with_slice(&grad.contiguous()?, |g| Ok(self.0.unpartition(g, c)))?;
        grad_like(dx, arg)
    }
}

impl CustomOp2 for FilledWindowPartition {
    fn name(&self) -> &'static str {
        "msa-filled-window-partition"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c) = self.0.check(l1.dims(), false)?;
        let x = storage_slice(s1, l1, "window partition")?;
        let fill = storage_slice(s2, l2, "window partition fill")?;
        if fill.len() != c {
            candle_core::bail!(
                "window partition: fill has {} values, expected {c}",
                fill.len()
            );
        }
        let out = self.0.partition(x, c, Some(fill));
        Ok((CpuStorage::F32(out), self.0.windowed_shape(b, c)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        fill: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(3)?;
        let (dx, dfill) = with_slice(&grad.contiguous()?, |g| {
            Ok((self.0.unpartition(g, c), self.0.padding_sum(g, c)))
        })?;
        Ok((grad_like(dx, x)?, grad_like(dfill, fill)?))
    }
}

impl CustomOp1 for WindowUnpartition {
    fn name(&self) -> &'static str {
        "msa-window-unpartition"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c) = self.0.check(layout.dims(), true)?;
        let x = storage_slice(storage, layout, "window unpartition")?;
        let (h, w) = self.0.hw;
        let out = self.0.unpartition(x, c);
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let c = arg.dim(3)?;
        let dx = with_slice(&grad.contiguous()?, |g| Ok(self.0.partition(g, c, None)))?;
        grad_like(dx, arg)
    }
}
