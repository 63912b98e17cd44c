//! The CUDA launches behind `kernels::attention::flash` (`cuda/attention.cu`): the forward
//! kernel, and the backward's delta, dq and dk/dv kernels. The source is compiled with
//! NVRTC on first use.

use super::flash_dims::{Dims, MAX_D, MAX_HD};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{Layout, Result, Tensor};

const SOURCE: &str = include_str!("../cuda/attention.cu");
const MODULE: &str = "msa_attention";
const ROWS: u32 = 64;
const TILE: usize = 32;

type View<'a> = candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>;
type Slice = candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>;

fn ptx() -> Result<String> {
    use std::sync::OnceLock;
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        let defines = format!("#define MSA_MAX_D {MAX_D}\n#define MSA_MAX_HD {MAX_HD}\n");
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(defines + SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    })
    .clone()
    .map_err(|e| candle_core::Error::Msg(format!("compiling cuda/attention.cu: {e}")))
}

fn slice<'a>(s: &'a CudaStorage, l: &Layout) -> Result<View<'a>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("flash attention needs contiguous inputs".into()))?;
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// One thread per row of `rows` (per BH), `shared_floats` of shared memory per block.
fn config(bh: usize, rows: usize, shared_floats: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(ROWS).max(1), bh as u32, 1),
        block_dim: (ROWS, 1, 1),
        shared_mem_bytes: (shared_floats * 4) as u32,
    }
}

fn ints(dm: Dims) -> (i32, i32, i32, i32) {
    (dm.nq as i32, dm.nk as i32, dm.d as i32, dm.hd as i32)
}

/// The forward kernel: out (BH, NQ, HD) and the query rows' log-sum-exp (BH, NQ).
fn forward(dev: &CudaDevice, q: &View, k: &View, v: &View, dm: Dims) -> Result<(Slice, Slice)> {
    let func = dev.get_or_load_custom_func("attn_fwd", MODULE, &ptx()?)?;
    let mut out = dev.alloc_zeros::<f32>(dm.bh * dm.nq * dm.hd)?;
    let mut lse = dev.alloc_zeros::<f32>(dm.bh * dm.nq)?;
    let (nq, nk, d, hd) = ints(dm);
    let mut b = func.builder();
    b.arg(q).arg(k).arg(v).arg(&mut out).arg(&mut lse);
    b.arg(&nq).arg(&nk).arg(&d).arg(&hd);
    // SAFETY: the buffers hold the rows and widths of `dm`, as the kernel reads them.
    unsafe { b.launch(config(dm.bh, dm.nq, TILE * (dm.d + dm.hd))) }.w()?;
    Ok((out, lse))
}

pub(crate) fn forward_storage(
    q: &CudaStorage,
    lq: &Layout,
    k: &CudaStorage,
    lk: &Layout,
    v: &CudaStorage,
    lv: &Layout,
    dm: Dims,
) -> Result<CudaStorage> {
    let dev = q.device();
    let (out, _) = forward(dev, &slice(q, lq)?, &slice(k, lk)?, &slice(v, lv)?, dm)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// dq, dk and dv in one flat buffer, given the output gradient `dout` (BH, NQ, HD).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_storage(
    q: &CudaStorage,
    lq: &Layout,
    k: &CudaStorage,
    lk: &Layout,
    v: &CudaStorage,
    lv: &Layout,
    dout: &Tensor,
    dm: Dims,
) -> Result<CudaStorage> {
    let dev = q.device();
    let (stored, ld) = dout.storage_and_layout();
    let candle_core::Storage::Cuda(dout) = &*stored else {
        candle_core::bail!("the output gradient is not on the GPU");
    };
    let dout = slice(dout, ld)?;
    let (q, k, v) = (slice(q, lq)?, slice(k, lk)?, slice(v, lv)?);
    let (out, lse) = forward(dev, &q, &k, &v, dm)?;
    let (nq, nk, d, hd) = ints(dm);
    let rows = (dm.bh * dm.nq) as i32;
    let mut delta = dev.alloc_zeros::<f32>(dm.bh * dm.nq)?;
    let f = dev.get_or_load_custom_func("attn_bwd_delta", MODULE, &ptx()?)?;
    let mut b = f.builder();
    b.arg(&out).arg(&dout).arg(&mut delta).arg(&rows).arg(&hd);
    // SAFETY: out and dout hold BH*NQ rows of HD, delta BH*NQ values.
    unsafe { b.launch(config(1, dm.bh * dm.nq, 0)) }.w()?;
    let mut grads = dev.alloc_zeros::<f32>(dm.grads_len())?;
    {
        let (mut dq, mut rest) = grads.split_at_mut(dm.bh * dm.nq * dm.d);
        let (mut dk, mut dv) = rest.split_at_mut(dm.bh * dm.nk * dm.d);
        let f = dev.get_or_load_custom_func("attn_bwd_dq", MODULE, &ptx()?)?;
        let mut b = f.builder();
        b.arg(&q).arg(&k).arg(&v).arg(&dout).arg(&lse).arg(&delta);
        b.arg(&mut dq).arg(&nq).arg(&nk).arg(&d).arg(&hd);
        // SAFETY: every buffer has the rows and widths the kernel reads or writes.
        unsafe { b.launch(config(dm.bh, dm.nq, TILE * (dm.d + dm.hd))) }.w()?;
        let f = dev.get_or_load_custom_func("attn_bwd_dkv", MODULE, &ptx()?)?;
        let mut b = f.builder();
        b.arg(&q).arg(&k).arg(&v).arg(&dout).arg(&lse).arg(&delta);
        b.arg(&mut dk)
            .arg(&mut dv)
            .arg(&nq)
            .arg(&nk)
            .arg(&d)
            .arg(&hd);
        // SAFETY: as above; the shared tile also holds TILE (lse, delta) pairs.
        unsafe { b.launch(config(dm.bh, dm.nk, TILE * (dm.d + dm.hd + 2))) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(grads, dev.clone()))
}
