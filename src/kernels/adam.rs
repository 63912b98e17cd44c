//! Adam's update as in-place, multi-threaded passes over CPU storage. The composed update
//! makes a dozen single-threaded passes per parameter, each into a freshly allocated
//! tensor: under full fine-tuning that was a sixth of the step. The arithmetic is the
//! composed update's, operation for operation, so both give the same numbers.

use super::{storage_slice, storage_slice_mut};
use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result};
use rayon::prelude::*;

const CHUNK: usize = 1 << 15;

fn same_len(op: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        candle_core::bail!("{op}: {a} elements against {b}");
    }
    Ok(())
}

/// A moment's running average, in place: `m = m·decay + g·(1 - decay)`, with `g` squared
/// for the second moment.
pub struct Moment {
    pub decay: f64,
    pub square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "msa-adam-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let m = storage_slice_mut(s1, l1, self.name())?;
        let g = storage_slice(s2, l2, self.name())?;
        same_len(self.name(), m.len(), g.len())?;
        let (keep, take) = (self.decay as f32, (1.0 - self.decay) as f32);
        let square = self.square;
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    let g = if square { g * g } else { g };
                    *m = *m * keep + g * take;
                }
            });
        Ok(())
    }
}

/// The parameter update, in place: `p -= (m / (sqrt(v) / sqrt(bc2) + eps)) · lr / bc1`.
pub struct Apply {
    pub inv_sqrt_bc2: f64,
    pub eps: f64,
    pub lr_over_bc1: f64,
}

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "msa-adam-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let p = storage_slice_mut(s1, l1, self.name())?;
        let m = storage_slice(s2, l2, self.name())?;
        let v = storage_slice(s3, l3, self.name())?;
        same_len(self.name(), p.len(), m.len())?;
        same_len(self.name(), p.len(), v.len())?;
        let scale = self.inv_sqrt_bc2 as f32;
        let eps = self.eps as f32;
        let step = self.lr_over_bc1 as f32;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    *p -= (m / (v.sqrt() * scale + eps)) * step;
                }
            });
        Ok(())
    }
}
