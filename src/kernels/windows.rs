//! SAM's window partition (zero-padding to a multiple of the window) and its inverse
//! (cropping the padding) as single-copy CPU ops, each the other's backward. The composed
//! version pads by concatenation, permutes, copies and crops, and its backward makes a
//! zero-filled tensor for every crop.

use super::{storage_slice, with_slice};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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

/// (B, H, W, C) -> (B * windows, ws, ws, C).
pub struct WindowPartition {
    pub windows: Windows,
    /// The padding's value (C values, constant: it gets no gradient); zeros if None.
    pub fill: Option<Vec<f32>>,
}

impl WindowPartition {
    pub fn new(windows: Windows) -> Self {
        Self {
            windows,
            fill: None,
        }
    }

    pub fn with_fill(self, fill: Vec<f32>) -> Self {
        Self {
            fill: Some(fill),
            ..self
        }
    }
}

/// (B * windows, ws, ws, C) -> (B, H, W, C).
pub struct WindowUnpartition(pub Windows);

impl CustomOp1 for WindowPartition {
    fn name(&self) -> &'static str {
        "msa-window-partition"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c) = self.windows.check(layout.dims(), false)?;
        let x = storage_slice(storage, layout, "window partition")?;
        let (gh, gw) = self.windows.grid();
        let ws = self.windows.ws;
        if let Some(f) = &self.fill {
            if f.len() != c {
                candle_core::bail!(
                    "window partition: fill has {} values, expected {c}",
                    f.len()
                );
            }
        }
        let out = self.windows.partition(x, c, self.fill.as_deref());
        Ok((CpuStorage::F32(out), Shape::from((b * gh * gw, ws, ws, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let c = arg.dim(3)?;
        let dx = with_slice(&grad.contiguous()?, |g| Ok(self.windows.unpartition(g, c)))?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
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
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}
