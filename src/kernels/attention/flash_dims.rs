//! The shapes flash attention takes, checked the same way on the CPU and on a GPU.

use candle_core::{Layout, Result};

/// The widest q/k rows (`MAX_D`) and v rows (`MAX_HD`) the CUDA kernels hold per thread,
/// and the widest pair together: a tile of 32 q or k rows, 32 v rows and 64 row statistics
/// fills at most the 48 KiB of shared memory a block gets by default.
pub const MAX_D: usize = 256;
pub const MAX_HD: usize = 128;
pub const MAX_D_PLUS_HD: usize = 48 * 1024 / (32 * 4) - 2;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub bh: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
    pub hd: usize,
}

impl Dims {
    pub fn of(lq: &Layout, lk: &Layout, lv: &Layout) -> Result<Self> {
        let (bh, nq, d) = lq.shape().dims3()?;
        let (bk, nk, dk) = lk.shape().dims3()?;
        let (bv, nv, hd) = lv.shape().dims3()?;
        if (bk, dk) != (bh, d) || (bv, nv) != (bh, nk) {
            candle_core::bail!(
                "flash attention: q {:?}, k {:?} and v {:?} do not fit (BH, NQ, D), (BH, NK, D), (BH, NK, HD)",
                lq.dims(),
                lk.dims(),
                lv.dims()
            );
        }
        if d > MAX_D || hd > MAX_HD || d + hd > MAX_D_PLUS_HD {
            candle_core::bail!(
                "flash attention takes rows up to {MAX_D} (q, k) and {MAX_HD} (v) wide, \
                 {MAX_D_PLUS_HD} together, not {d} and {hd}"
            );
        }
        Ok(Self { bh, nq, nk, d, hd })
    }

    /// The length of the flat (dq, dk, dv) buffer.
    pub fn grads_len(&self) -> usize {
        self.bh * (self.nq * self.d + self.nk * (self.d + self.hd))
    }
}
