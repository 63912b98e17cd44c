//! Attention on CUDA without the attention matrix (`cuda/attention.cu`): softmax(q kᵀ) v
//! for q, k (BH, N, D) and v (BH, N, HD) in f32, forward and backward, memory linear in N.
//! SAM's relative-position bias enters as extra columns of q and k
//! (`model::rel_pos_columns`), and the scale is folded into q, so the kernels apply
//! neither. The source is compiled with NVRTC on first use.
//!
//! The model uses it only with `MSA_FLASH_ATTENTION=1` until the GPU parity tests
//! (tests/cuda_attention.rs, and the golden tests with the variable set) pass on a device.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

const SOURCE: &str = include_str!("cuda/attention.cu");
const MODULE: &str = "msa_attention";
const ROWS: u32 = 64;
const TILE: usize = 32;
const MAX_D: usize = 256;
const MAX_HD: usize = 128;

/// Whether the model's attention takes these kernels (`MSA_FLASH_ATTENTION=1`).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MSA_FLASH_ATTENTION").is_ok_and(|v| v == "1"))
}

/// softmax(q kᵀ) v over the last two dimensions, with its backward.
pub struct FlashAttention;

/// The backward as an op of (q, k, v) holding dO: returns dq, dk and dv one after the other
/// in one flat buffer.
struct FlashAttentionBackward {
    dout: Tensor,
}

type View<'a> = candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>;
type Slice = candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>;

fn ptx() -> Result<String> {
    use std::sync::OnceLock;
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    })
    .clone()
    .map_err(|e| candle_core::Error::Msg(format!("compiling cuda/attention.cu: {e}")))
}

fn slice<'a>(s: &'a CudaStorage, l: &Layout) -> Result<View<'a>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused attention needs contiguous inputs".into()))?;
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

struct Dims {
    bh: usize,
    n: usize,
    d: usize,
    hd: usize,
}

fn dims(lq: &Layout, lv: &Layout) -> Result<Dims> {
    let (bh, n, d) = lq.shape().dims3()?;
    let (_, _, hd) = lv.shape().dims3()?;
    if d > MAX_D || hd > MAX_HD {
        candle_core::bail!(
            "fused attention takes rows up to {MAX_D} (q, k) and {MAX_HD} (v) wide, not {d} and {hd}"
        );
    }
    Ok(Dims { bh, n, d, hd })
}

fn config(dm: &Dims, shared_floats: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((dm.n as u32).div_ceil(ROWS), dm.bh as u32, 1),
        block_dim: (ROWS, 1, 1),
        shared_mem_bytes: (shared_floats * 4) as u32,
    }
}

/// The forward kernel: out (BH, N, HD) and the rows' log-sum-exp (BH, N).
fn forward(dev: &CudaDevice, q: &View, k: &View, v: &View, dm: &Dims) -> Result<(Slice, Slice)> {
    let func = dev.get_or_load_custom_func("attn_fwd", MODULE, &ptx()?)?;
    let mut out = dev.alloc_zeros::<f32>(dm.bh * dm.n * dm.hd)?;
    let mut lse = dev.alloc_zeros::<f32>(dm.bh * dm.n)?;
    let (n, d, hd) = (dm.n as i32, dm.d as i32, dm.hd as i32);
    let mut b = func.builder();
    b.arg(q).arg(k).arg(v).arg(&mut out).arg(&mut lse);
    b.arg(&n).arg(&d).arg(&hd);
    // SAFETY: the buffers hold BH*N rows of the widths given, as the kernel reads them.
    unsafe { b.launch(config(dm, TILE * (dm.d + dm.hd))) }.w()?;
    Ok((out, lse))
}

fn cpu_refused() -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("msa-flash-attention runs on CUDA only")
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "msa-flash-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused()
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dm = dims(lq, lv)?;
        let dev = q.device();
        let (out, _) = forward(dev, &slice(q, lq)?, &slice(k, lk)?, &slice(v, lv)?, &dm)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((dm.bh, dm.n, dm.hd)),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (bh, n, d) = q.dims3()?;
        let hd = v.dim(2)?;
        let op = FlashAttentionBackward {
            dout: grad.contiguous()?,
        };
        let flat = q
            .contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?;
        let part =
            |at: usize, width: usize| flat.narrow(0, at, bh * n * width)?.reshape((bh, n, width));
        Ok((
            Some(part(0, d)?),
            Some(part(bh * n * d, d)?),
            Some(part(2 * bh * n * d, hd)?),
        ))
    }
}

impl CustomOp3 for FlashAttentionBackward {
    fn name(&self) -> &'static str {
        "msa-flash-attention-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused()
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dm = dims(lq, lv)?;
        let (bh, n, d, hd) = (dm.bh, dm.n, dm.d, dm.hd);
        let dev = q.device();
        let (stored, ld) = self.dout.storage_and_layout();
        let candle_core::Storage::Cuda(dout) = &*stored else {
            candle_core::bail!("the output gradient is not on the GPU");
        };
        let dout = slice(dout, ld)?;
        let (q, k, v) = (slice(q, lq)?, slice(k, lk)?, slice(v, lv)?);
        let (out, lse) = forward(dev, &q, &k, &v, &dm)?;
        let mut delta = dev.alloc_zeros::<f32>(bh * n)?;
        let (ni, di, hdi, rows) = (n as i32, d as i32, hd as i32, (bh * n) as i32);
        let f = dev.get_or_load_custom_func("attn_bwd_delta", MODULE, &ptx()?)?;
        let mut b = f.builder();
        b.arg(&out).arg(&dout).arg(&mut delta).arg(&rows).arg(&hdi);
        let cfg = LaunchConfig {
            grid_dim: (((bh * n) as u32).div_ceil(ROWS).max(1), 1, 1),
            block_dim: (ROWS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: out and dout hold BH*N rows of HD, delta BH*N values.
        unsafe { b.launch(cfg) }.w()?;
        let mut grads = dev.alloc_zeros::<f32>(bh * n * (2 * d + hd))?;
        {
            let (mut dq, mut rest) = grads.split_at_mut(bh * n * d);
            let (mut dk, mut dv) = rest.split_at_mut(bh * n * d);
            let f = dev.get_or_load_custom_func("attn_bwd_dq", MODULE, &ptx()?)?;
            let mut b = f.builder();
            b.arg(&q)
                .arg(&k)
                .arg(&v)
                .arg(&dout)
                .arg(&lse)
                .arg(&delta)
                .arg(&mut dq);
            b.arg(&ni).arg(&di).arg(&hdi);
            // SAFETY: every buffer has the rows and widths the kernel reads or writes.
            unsafe { b.launch(config(&dm, TILE * (d + hd))) }.w()?;
            let f = dev.get_or_load_custom_func("attn_bwd_dkv", MODULE, &ptx()?)?;
            let mut b = f.builder();
            b.arg(&q).arg(&k).arg(&v).arg(&dout).arg(&lse).arg(&delta);
            b.arg(&mut dk).arg(&mut dv).arg(&ni).arg(&di).arg(&hdi);
            // SAFETY: as above; the shared tile also holds TILE (lse, delta) pairs.
            unsafe { b.launch(config(&dm, TILE * (d + hd + 2))) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(grads, dev.clone()),
            Shape::from(bh * n * (2 * d + hd)),
        ))
    }
}
