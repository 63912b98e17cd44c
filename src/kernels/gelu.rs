//! GELU (erf form) as one CPU op with a vectorised backward: candle's composed backward
//! makes eight passes over the input, with a scalar `erf`, per GELU.

use super::simd::{gelu_grad_in_place, gelu_in_place};
use super::{grad_like, par_filled, storage_slice, with_slice};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

pub struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "msa-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_slice(storage, layout, "gelu")?;
        let out = par_filled(x.len(), CHUNK, |i, o| {
            o.copy_from_slice(&x[i * CHUNK..i * CHUNK + o.len()]);
            gelu_in_place(o);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mut g = grad.flatten_all()?.to_vec1::<f32>()?;
        with_slice(arg, |x| {
            g.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(g, x)| gelu_grad_in_place(g, x));
            Ok(())
        })?;
        grad_like(g, arg)
    }
}
