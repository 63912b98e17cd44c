//! Flash attention on tensor cores for SAM's image encoder on CUDA
//! (`cuda/flash_tc.cu`): softmax(scale q kᵀ + bias) v with SAM's decomposed bias, forward
//! and backward, never holding an attention matrix. q, k and v are (BH, N, 64) in bf16 or
//! f16; the bias arrives as each query's row and column terms (`rel_pos_columns::rel_terms`),
//! whose gradient the backward pass returns so that candle's autograd carries it on to q
//! and the tables.
//!
//! The four inputs travel as one packed tensor, so that the op has one operand and a
//! backward pass of its own (`own_backward::with_backward`). The forward pass runs two
//! kernels (each query's log-sum-exp, then the output); the backward pass three (the rows'
//! delta, then dq with the bias gradient, and dk with dv).
//!
//! Off by default until the kernels have passed the parity tests on a GPU:
//! `MSA_FUSED_ATTENTION=1` turns them on. tests/flash_tc_emulated.rs checks the kernel
//! source on the CPU.

use crate::model::own_backward::with_backward;
use candle_core::{CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// The head width the kernels are compiled for (SAM ViT-B and ViT-L).
pub const HEAD_DIM: usize = 64;

/// Whether `MSA_FUSED_ATTENTION=1` asks for the kernels.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MSA_FUSED_ATTENTION").is_ok_and(|v| v == "1"))
}

/// Whether attention over heads of `head_dim` on tensors like `t` can run on the kernels:
/// a CUDA build with them compiled, a GPU tensor in bf16 or f16, heads 64 wide.
pub fn supports(t: &Tensor, head_dim: usize) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(t.dtype(), DType::BF16 | DType::F16)
        && head_dim == HEAD_DIM
        && compiled()
}

#[cfg(feature = "cuda")]
fn compiled() -> bool {
    !cuda::PTX.is_empty()
}

#[cfg(not(feature = "cuda"))]
fn compiled() -> bool {
    false
}

// The CPU build only type-checks the ops around the CUDA launches.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
struct Dims {
    bh: usize,
    n: usize,
    gh: usize,
    gw: usize,
    bias: bool,
    scale: f32,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl Dims {
    fn qkv_len(&self) -> usize {
        self.bh * self.n * HEAD_DIM
    }

    fn rel_len(&self) -> usize {
        if self.bias {
            self.bh * self.n * (self.gh + self.gw)
        } else {
            0
        }
    }

    fn packed_len(&self) -> usize {
        3 * self.qkv_len() + self.rel_len()
    }
}

/// softmax(scale q kᵀ + bias) v for q, k, v (BH, N, 64) of one dtype (bf16 or f16), on an
/// h x w grid of N tokens. `rel` (BH, N, h + w), in the same dtype, holds each query's
/// bias terms: a key at (ky, kx) adds terms ky and h + kx.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel: Option<&Tensor>,
    (h, w): (usize, usize),
    scale: f64,
) -> Result<Tensor> {
    let (bh, n, hd) = q.dims3()?;
    let dims = Dims {
        bh,
        n,
        gh: h,
        gw: w,
        bias: rel.is_some(),
        scale: scale as f32,
    };
    if hd != HEAD_DIM || n != h * w || k.dims() != q.dims() || v.dims() != q.dims() {
        candle_core::bail!(
            "fused attention takes q, k, v of shape (BH, {h} x {w}, {HEAD_DIM}), got {:?}, {:?}, {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if let Some(r) = rel {
        if r.dims() != [bh, n, h + w] {
            candle_core::bail!(
                "fused attention takes bias terms of shape ({bh}, {n}, {}), got {:?}",
                h + w,
                r.dims()
            );
        }
    }
    let mut parts = vec![q.flatten_all()?, k.flatten_all()?, v.flatten_all()?];
    parts.extend(rel.map(|r| r.flatten_all()).transpose()?);
    let packed = Tensor::cat(&parts, 0)?;
    let lse = packed.apply_op1_no_bwd(&Lse(dims))?;
    let out = packed.apply_op2_no_bwd(&lse, &Out(dims))?;
    if !packed.track_op() {
        return Ok(out);
    }
    with_backward(&packed, out, "msa-flash-tc", move |x, y, dy| {
        x.apply_op3_no_bwd(
            y,
            &dy.contiguous()?,
            &Backward {
                dims,
                lse: lse.clone(),
            },
        )?
        .to_dtype(x.dtype())
    })
}

fn cuda_only<T>(what: &str) -> Result<T> {
    candle_core::bail!("{what} runs on CUDA GPUs only")
}

/// Each query's log-sum-exp (BH, N), f32, from the packed inputs.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Lse(Dims);

/// The output (BH, N, 64) from the packed inputs and the log-sum-exp.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Out(Dims);

/// The packed inputs' gradient (dq, dk, dv, then the bias terms'), f32, from the packed
/// inputs, the output and its gradient.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Backward {
    dims: Dims,
    lse: Tensor,
}

impl CustomOp1 for Lse {
    fn name(&self) -> &'static str {
        "msa-flash-tc-lse"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        packed: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let lse = cuda::lse(packed, l, self.0)?;
        Ok((lse, Shape::from((self.0.bh, self.0.n))))
    }
}

impl CustomOp2 for Out {
    fn name(&self) -> &'static str {
        "msa-flash-tc-out"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        packed: &candle_core::CudaStorage,
        l: &Layout,
        lse: &candle_core::CudaStorage,
        ll: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = cuda::out(packed, l, lse, ll, self.0)?;
        Ok((out, Shape::from((self.0.bh, self.0.n, HEAD_DIM))))
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "msa-flash-tc-backward"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        packed: &candle_core::CudaStorage,
        l: &Layout,
        out: &candle_core::CudaStorage,
        lo: &Layout,
        dout: &candle_core::CudaStorage,
        ld: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let grads = cuda::backward((packed, l), (out, lo), (dout, ld), &self.lse, self.dims)?;
        Ok((grads, Shape::from(self.dims.packed_len())))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{Dims, HEAD_DIM};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum as Attr;
    use candle_core::cuda_backend::cudarc::driver::CudaFunction;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
    use candle_core::{DType, Layout, Result, Tensor};

    /// nvcc's PTX for `cuda/flash_tc.cu` (build.rs), empty where the GPU has no bf16
    /// tensor cores.
    pub(super) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_tc.ptx"));
    const MODULE: &str = "msa_flash_tc";

    // The tile sizes of cuda/flash_tc.cu, for the shared memory each kernel needs.
    const WARPS: usize = 4;
    const ROWS: usize = WARPS * 16;
    const TK: usize = 64;
    const TB: usize = 32;
    const LDT: usize = HEAD_DIM + 8;
    const DEFAULT_SHARED: usize = 48 * 1024;
    const MAX_SHARED: usize = 227 * 1024;

    fn forward_shared(t: usize) -> usize {
        2 * TK * LDT * t + WARPS * 16 * (TK + 4) * 4 + WARPS * 16 * (TK + 8) * t
    }

    fn backward_shared(t: usize) -> usize {
        2 * TB * LDT * t + WARPS * 16 * 2 * (TB + 4) * 4 + WARPS * 16 * (TB + 8) * t
    }

    fn dq_shared(t: usize, g: usize) -> usize {
        backward_shared(t) + ROWS * g * 4
    }

    fn dkv_shared(t: usize) -> usize {
        backward_shared(t) + 2 * TB * 4
    }

    /// Kernel `name` for dtype `t`, allowed `shared` bytes of dynamic shared memory.
    fn kernel(dev: &CudaDevice, name: &str, t: DType, shared: usize) -> Result<CudaFunction> {
        if shared > MAX_SHARED {
            candle_core::bail!(
                "fused attention: {name} needs {shared} bytes of shared memory, more than {MAX_SHARED}"
            );
        }
        let suffix = match t {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            other => candle_core::bail!("fused attention takes bf16 or f16, not {other:?}"),
        };
        let f = dev
            .get_or_load_custom_func(&format!("{name}_{suffix}"), MODULE, PTX)?
            .into_cuda_function();
        if shared > DEFAULT_SHARED {
            f.set_attribute(
                Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared as i32,
            )
            .w()?;
        }
        Ok(f)
    }

    fn config(blocks: (usize, usize), shared: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks.0.max(1) as u32, blocks.1.max(1) as u32, 1),
            block_dim: ((WARPS * 32) as u32, 1, 1),
            shared_mem_bytes: shared as u32,
        }
    }

    fn row_tiles(dm: Dims) -> (usize, usize) {
        (dm.n.div_ceil(ROWS), dm.bh)
    }

    fn view<'a, T: CudaDType + DeviceRepr>(
        s: &'a CudaStorage,
        l: &Layout,
    ) -> Result<CudaView<'a, T>> {
        let (a, b) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("fused attention needs contiguous inputs".into())
        })?;
        Ok(s.as_cuda_slice::<T>()?.slice(a..b))
    }

    /// q, k, v and the bias terms (or a null pointer) inside the packed input.
    struct Packed<'a, T: CudaDType + DeviceRepr> {
        q: CudaView<'a, T>,
        k: CudaView<'a, T>,
        v: CudaView<'a, T>,
        rel: Option<CudaView<'a, T>>,
    }

    impl<'a, T: CudaDType + DeviceRepr> Packed<'a, T> {
        fn of(s: &'a CudaStorage, l: &Layout, dm: Dims) -> Result<Self> {
            let all = view::<T>(s, l)?;
            if all.len() != dm.packed_len() {
                candle_core::bail!(
                    "fused attention: packed input of {} values, expected {}",
                    all.len(),
                    dm.packed_len()
                );
            }
            let m = dm.qkv_len();
            Ok(Self {
                q: all.slice(0..m),
                k: all.slice(m..2 * m),
                v: all.slice(2 * m..3 * m),
                rel: dm.bias.then(|| all.slice(3 * m..3 * m + dm.rel_len())),
            })
        }
    }

    /// Pushes `rel`, or a null pointer where there is no bias.
    fn push_rel<'b, T: DeviceRepr>(
        b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'b>,
        rel: &'b Option<CudaView<'b, T>>,
        null: &'b u64,
    ) {
        match rel {
            Some(r) => b.arg(r),
            None => b.arg(null),
        };
    }

    fn ints(dm: Dims) -> (i32, i32, i32) {
        (dm.n as i32, dm.gh as i32, dm.gw as i32)
    }

    pub(super) fn lse(s: &CudaStorage, l: &Layout, dm: Dims) -> Result<CudaStorage> {
        match s.dtype() {
            DType::BF16 => lse_typed::<half::bf16>(s, l, dm),
            DType::F16 => lse_typed::<half::f16>(s, l, dm),
            other => candle_core::bail!("fused attention takes bf16 or f16, not {other:?}"),
        }
    }

    fn lse_typed<T: CudaDType + DeviceRepr>(
        s: &CudaStorage,
        l: &Layout,
        dm: Dims,
    ) -> Result<CudaStorage> {
        let dev = s.device();
        let p = Packed::<T>::of(s, l, dm)?;
        let shared = forward_shared(2);
        let f = kernel(dev, "flash_lse", s.dtype(), shared)?;
        let mut lse = dev.alloc_zeros::<f32>(dm.bh * dm.n)?;
        let (n, gh, gw) = ints(dm);
        let null = 0u64;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&p.q).arg(&p.k);
        push_rel(&mut b, &p.rel, &null);
        b.arg(&mut lse).arg(&n).arg(&gh).arg(&gw).arg(&dm.scale);
        // SAFETY: the views hold (BH, N, 64) rows and (BH, N, gh + gw) terms, lse BH * N.
        unsafe { b.launch(config(row_tiles(dm), shared)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(lse, dev.clone()))
    }

    pub(super) fn out(
        s: &CudaStorage,
        l: &Layout,
        lse: &CudaStorage,
        ll: &Layout,
        dm: Dims,
    ) -> Result<CudaStorage> {
        match s.dtype() {
            DType::BF16 => out_typed::<half::bf16>(s, l, lse, ll, dm),
            DType::F16 => out_typed::<half::f16>(s, l, lse, ll, dm),
            other => candle_core::bail!("fused attention takes bf16 or f16, not {other:?}"),
        }
    }

    fn out_typed<T: CudaDType + DeviceRepr>(
        s: &CudaStorage,
        l: &Layout,
        lse: &CudaStorage,
        ll: &Layout,
        dm: Dims,
    ) -> Result<CudaStorage> {
        let dev = s.device();
        let p = Packed::<T>::of(s, l, dm)?;
        let lse = view::<f32>(lse, ll)?;
        let shared = forward_shared(2);
        let f = kernel(dev, "flash_out", s.dtype(), shared)?;
        // SAFETY: the kernel writes every row of the output.
        let mut out = unsafe { dev.alloc::<T>(dm.qkv_len()) }?;
        let (n, gh, gw) = ints(dm);
        let null = 0u64;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&p.q).arg(&p.k).arg(&p.v);
        push_rel(&mut b, &p.rel, &null);
        b.arg(&lse)
            .arg(&mut out)
            .arg(&n)
            .arg(&gh)
            .arg(&gw)
            .arg(&dm.scale);
        // SAFETY: as in `lse_typed`; out holds (BH, N, 64).
        unsafe { b.launch(config(row_tiles(dm), shared)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }

    pub(super) fn backward(
        (s, l): (&CudaStorage, &Layout),
        (o, lo): (&CudaStorage, &Layout),
        (d, ld): (&CudaStorage, &Layout),
        lse: &Tensor,
        dm: Dims,
    ) -> Result<CudaStorage> {
        let (lse_s, lse_l) = lse.storage_and_layout();
        let candle_core::Storage::Cuda(lse_s) = &*lse_s else {
            candle_core::bail!("fused attention: the log-sum-exp is not on the GPU");
        };
        let lse = view::<f32>(lse_s, lse_l)?;
        match s.dtype() {
            DType::BF16 => backward_typed::<half::bf16>((s, l), (o, lo), (d, ld), &lse, dm),
            DType::F16 => backward_typed::<half::f16>((s, l), (o, lo), (d, ld), &lse, dm),
            other => candle_core::bail!("fused attention takes bf16 or f16, not {other:?}"),
        }
    }

    fn backward_typed<T: CudaDType + DeviceRepr>(
        (s, l): (&CudaStorage, &Layout),
        (o, lo): (&CudaStorage, &Layout),
        (d, ld): (&CudaStorage, &Layout),
        lse: &CudaView<f32>,
        dm: Dims,
    ) -> Result<CudaStorage> {
        let dev = s.device();
        let t = s.dtype();
        let p = Packed::<T>::of(s, l, dm)?;
        let (out, dout) = (view::<T>(o, lo)?, view::<T>(d, ld)?);
        let rows = dm.bh * dm.n;
        let delta = row_deltas(dev, t, &out, &dout, rows)?;
        let mut grads = dev.alloc_zeros::<f32>(dm.packed_len())?;
        let m = dm.qkv_len();
        let (mut dq, mut rest) = grads.split_at_mut(m);
        let (mut dk, mut rest) = rest.split_at_mut(m);
        let (mut dv, mut drel) = rest.split_at_mut(m);
        let (n, gh, gw) = ints(dm);
        let null = 0u64;

        let shared = dq_shared(2, dm.gh + dm.gw);
        let f = kernel(dev, "flash_dq", t, shared)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&p.q).arg(&p.k).arg(&p.v).arg(&dout);
        push_rel(&mut b, &p.rel, &null);
        b.arg(lse).arg(&delta).arg(&mut dq).arg(&mut drel);
        b.arg(&n).arg(&gh).arg(&gw).arg(&dm.scale);
        // SAFETY: every view has the rows the kernel reads; dq holds (BH, N, 64), drel the
        // bias terms' shape (empty and unused without a bias).
        unsafe { b.launch(config(row_tiles(dm), shared)) }.w()?;

        let shared = dkv_shared(2);
        let f = kernel(dev, "flash_dkv", t, shared)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&p.q).arg(&p.k).arg(&p.v).arg(&dout);
        push_rel(&mut b, &p.rel, &null);
        b.arg(lse).arg(&delta).arg(&mut dk).arg(&mut dv);
        b.arg(&n).arg(&gh).arg(&gw).arg(&dm.scale);
        // SAFETY: as above; dk and dv hold (BH, N, 64).
        unsafe { b.launch(config(row_tiles(dm), shared)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(grads, dev.clone()))
    }

    /// delta_i = dO_i . O_i for every query row.
    fn row_deltas<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        t: DType,
        out: &CudaView<T>,
        dout: &CudaView<T>,
        rows: usize,
    ) -> Result<CudaSlice<f32>> {
        let f = kernel(dev, "flash_delta", t, 0)?;
        let mut delta = dev.alloc_zeros::<f32>(rows)?;
        let rows_i = rows as i32;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(out).arg(dout).arg(&mut delta).arg(&rows_i);
        // SAFETY: out and dout hold `rows` rows of 64, delta `rows` values.
        unsafe { b.launch(config((rows.div_ceil(WARPS), 1), 0)) }.w()?;
        Ok(delta)
    }
}
