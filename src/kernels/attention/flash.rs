//! softmax(q kᵀ) v without the attention matrix, forward and backward, for q (BH, NQ, D),
//! k (BH, NK, D) and v (BH, NK, HD) in f32: memory grows with NQ + NK, never NQ x NK.
//! SAM's relative-position bias enters as extra columns of q and k
//! (`model::rel_pos_columns`) and the scale is folded into q, so no bias or scale is
//! applied here.
//!
//! On CUDA the kernels of `cuda/attention.cu` run (`kernels::attention::flash_cuda`). On the CPU
//! the same loops run here, one row at a time: the running maximum and sum of the online
//! softmax in the forward pass, and the probabilities recomputed from each query row's
//! log-sum-exp in the backward pass. The CPU form is what tests check against candle's
//! composed ops, so the CUDA kernels differ from tested code only in how rows map to
//! threads. A model takes this op when loaded with it (`Params::set_flash_attention`,
//! `LoadOptions::flash_attention`; default `MSA_FLASH_ATTENTION=1`). It stays an opt-in: the
//! CUDA kernels pass the parity tests on an H200, but take 5x the time of candle's attention
//! (one thread per row, no tensor cores). On the CPU it is slower than `attention::cpu`, and
//! serves checks.

use super::flash_dims::Dims;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Whether the model's attention takes this op (`MSA_FLASH_ATTENTION=1`).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MSA_FLASH_ATTENTION").is_ok_and(|v| v == "1"))
}

/// softmax(q kᵀ) v over the last two dimensions, with its backward.
pub struct FlashAttention;

/// The backward as an op of (q, k, v) holding dO: returns dq, dk and dv one after the other
/// in one flat buffer.
pub(crate) struct FlashAttentionBackward {
    pub dout: Tensor,
}

fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("flash attention needs contiguous inputs".into()))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The forward pass: out (BH, NQ, HD) and each query row's log-sum-exp (BH, NQ).
fn forward_cpu(q: &[f32], k: &[f32], v: &[f32], dm: Dims) -> (Vec<f32>, Vec<f32>) {
    let Dims { nq, nk, d, hd, .. } = dm;
    let mut out = vec![0f32; dm.bh * nq * hd];
    let mut lse = vec![0f32; dm.bh * nq];
    out.par_chunks_mut(hd)
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each(|(r, (acc, row_lse))| {
            let b = r / nq;
            let qr = &q[r * d..(r + 1) * d];
            let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
            for j in 0..nk {
                let key = b * nk + j;
                let s = dot(qr, &k[key * d..(key + 1) * d]);
                let m2 = m.max(s);
                let correction = (m - m2).exp();
                let p = (s - m2).exp();
                l = l * correction + p;
                for (a, x) in acc.iter_mut().zip(&v[key * hd..(key + 1) * hd]) {
                    *a = *a * correction + p * x;
                }
                m = m2;
            }
            acc.iter_mut().for_each(|a| *a /= l);
            *row_lse = m + l.ln();
        });
    (out, lse)
}

/// The backward pass: dq, dk and dv in one flat buffer.
fn backward_cpu(q: &[f32], k: &[f32], v: &[f32], dout: &[f32], dm: Dims) -> Vec<f32> {
    let Dims { nq, nk, d, hd, .. } = dm;
    let (out, lse) = forward_cpu(q, k, v, dm);
    // delta_i = dO_i . O_i, the softmax backward's row term.
    let delta: Vec<f32> = out
        .par_chunks(hd)
        .zip(dout.par_chunks(hd))
        .map(|(o, g)| dot(o, g))
        .collect();
    let mut grads = vec![0f32; dm.grads_len()];
    let (dq, rest) = grads.split_at_mut(dm.bh * nq * d);
    let (dk, dv) = rest.split_at_mut(dm.bh * nk * d);
    // dq_i = Σ_j p_ij (dO_i . v_j - delta_i) k_j, per query row.
    dq.par_chunks_mut(d).enumerate().for_each(|(r, g)| {
        let b = r / nq;
        let (qr, dor) = (&q[r * d..(r + 1) * d], &dout[r * hd..(r + 1) * hd]);
        for j in 0..nk {
            let key = b * nk + j;
            let kr = &k[key * d..(key + 1) * d];
            let p = (dot(qr, kr) - lse[r]).exp();
            let ds = p * (dot(dor, &v[key * hd..(key + 1) * hd]) - delta[r]);
            g.iter_mut().zip(kr).for_each(|(a, x)| *a += ds * x);
        }
    });
    // dv_j = Σ_i p_ij dO_i and dk_j = Σ_i p_ij (dO_i . v_j - delta_i) q_i, per key row.
    dk.par_chunks_mut(d)
        .zip(dv.par_chunks_mut(hd))
        .enumerate()
        .for_each(|(key, (gk, gv))| {
            let b = key / nk;
            let (kr, vr) = (&k[key * d..(key + 1) * d], &v[key * hd..(key + 1) * hd]);
            for i in 0..nq {
                let r = b * nq + i;
                let (qr, dor) = (&q[r * d..(r + 1) * d], &dout[r * hd..(r + 1) * hd]);
                let p = (dot(qr, kr) - lse[r]).exp();
                let ds = p * (dot(dor, vr) - delta[r]);
                gv.iter_mut().zip(dor).for_each(|(a, x)| *a += p * x);
                gk.iter_mut().zip(qr).for_each(|(a, x)| *a += ds * x);
            }
        });
    grads
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "msa-flash-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = Dims::of(lq, lk, lv)?;
        let (q, k, v) = (cpu_slice(q, lq)?, cpu_slice(k, lk)?, cpu_slice(v, lv)?);
        let (out, _) = forward_cpu(q, k, v, dm);
        Ok((CpuStorage::F32(out), Shape::from((dm.bh, dm.nq, dm.hd))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dm = Dims::of(lq, lk, lv)?;
        let out = super::flash_cuda::forward_storage(q, lq, k, lk, v, lv, dm)?;
        Ok((out, Shape::from((dm.bh, dm.nq, dm.hd))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (bh, nq, d) = q.dims3()?;
        let (nk, hd) = (k.dim(1)?, v.dim(2)?);
        let op = FlashAttentionBackward {
            dout: grad.contiguous()?,
        };
        let flat = q
            .contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?;
        let part = |at: usize, rows: usize, width: usize| {
            flat.narrow(0, at, bh * rows * width)?
                .reshape((bh, rows, width))
        };
        let dk_at = bh * nq * d;
        Ok((
            Some(part(0, nq, d)?),
            Some(part(dk_at, nk, d)?),
            Some(part(dk_at + bh * nk * d, nk, hd)?),
        ))
    }
}

impl CustomOp3 for FlashAttentionBackward {
    fn name(&self) -> &'static str {
        "msa-flash-attention-backward"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = Dims::of(lq, lk, lv)?;
        let (stored, ld) = self.dout.storage_and_layout();
        let candle_core::Storage::Cpu(dout) = &*stored else {
            candle_core::bail!("the output gradient is not on the CPU");
        };
        let dout = cpu_slice(dout, ld)?;
        let (q, k, v) = (cpu_slice(q, lq)?, cpu_slice(k, lk)?, cpu_slice(v, lv)?);
        let grads = backward_cpu(q, k, v, dout, dm);
        Ok((CpuStorage::F32(grads), Shape::from(dm.grads_len())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dm = Dims::of(lq, lk, lv)?;
        let grads = super::flash_cuda::backward_storage(q, lq, k, lk, v, lv, &self.dout, dm)?;
        Ok((grads, Shape::from(dm.grads_len())))
    }
}
