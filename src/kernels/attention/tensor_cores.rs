//! Flash attention on tensor cores for SAM's image encoder on CUDA
//! (`cuda/flash_tc.cu`): softmax(scale q kᵀ + bias) v with SAM's decomposed bias, forward
//! and backward, never holding an attention matrix. q, k and v are (BH, N, D) in bf16 or
//! f16, D one of `HEAD_DIMS` (SAM ViT-B and ViT-L have 64); the bias arrives as each query's row and column terms (`rel_pos_columns::rel_terms`),
//! whose gradient the backward pass returns so that candle's autograd carries it on to q
//! and the tables.
//!
//! The four inputs travel as one packed tensor, so that the op has one operand and a
//! backward pass of its own (`backward_op::with_backward`). The forward pass runs two
//! kernels (each query's log-sum-exp, then the output); the backward pass three (the rows'
//! delta, then dq with the bias gradient, and dk with dv).
//!
//! Off by default until the kernels have passed the parity tests on a GPU:
//! `MSA_TENSOR_CORE_ATTENTION=1` turns them on (`MSA_FUSED_ATTENTION=1`, its first name,
//! too). tests/flash_tc_emulated.rs checks the kernel
//! source on the CPU.

use crate::kernels::backward_op::with_backward;
use candle_core::{CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// The head widths the kernels are compiled for.
pub const HEAD_DIMS: [usize; 3] = [16, 32, 64];

/// Whether `MSA_TENSOR_CORE_ATTENTION=1` (or its first name `MSA_FUSED_ATTENTION=1`) asks
/// for the kernels.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        ["MSA_TENSOR_CORE_ATTENTION", "MSA_FUSED_ATTENTION"]
            .iter()
            .any(|name| std::env::var(name).is_ok_and(|v| v == "1"))
    })
}

/// Whether attention over heads of `head_dim` on tensors like `t` can take the op: on a GPU,
/// a CUDA build with the kernels compiled and bf16 or f16; on the CPU, where the op runs its
/// f64 reference loops (for tests), any float dtype.
pub fn supports(t: &Tensor, head_dim: usize) -> bool {
    let device = match t.device() {
        candle_core::Device::Cpu => t.dtype().is_float(),
        d => d.is_cuda() && matches!(t.dtype(), DType::BF16 | DType::F16) && compiled(),
    };
    device && HEAD_DIMS.contains(&head_dim)
}

#[cfg(feature = "cuda")]
fn compiled() -> bool {
    !cuda::PTX.is_empty()
}

#[cfg(not(feature = "cuda"))]
fn compiled() -> bool {
    false
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    bh: usize,
    n: usize,
    d: usize,
    gh: usize,
    gw: usize,
    bias: bool,
    scale: f32,
}

impl Dims {
    fn qkv_len(&self) -> usize {
        self.bh * self.n * self.d
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

/// softmax(scale q kᵀ + bias) v for q, k, v (BH, N, D) of one dtype, on an h x w grid of N
/// tokens (see `supports`). `rel` (BH, N, h + w), in the same dtype, holds each query's
/// bias terms: a key at (ky, kx) adds terms ky and h + kx.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel: Option<&Tensor>,
    grid: (usize, usize),
    scale: f64,
) -> Result<Tensor> {
    let (packed, dims) = pack(q, k, v, rel, grid, scale)?;
    let lse = packed.apply_op1_no_bwd(&Lse(dims))?;
    let out = packed.apply_op2_no_bwd(&lse, &Out(dims))?;
    if !packed.track_op() {
        return Ok(out);
    }
    with_backward(&packed, out, "msa-flash-tc", move |x, y, dy| {
        packed_grad(x, y, dy, &lse, dims)
    })
}

/// What `gradients` needs from `forward`: the packed inputs and each query's log-sum-exp.
pub struct Saved {
    packed: Tensor,
    lse: Tensor,
    dims: Dims,
}

/// `attention` without a graph, for a caller with a backward pass of its own: the output
/// (BH, N, D), and what `gradients` needs.
pub fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel: Option<&Tensor>,
    grid: (usize, usize),
    scale: f64,
) -> Result<(Tensor, Saved)> {
    let rel = rel.map(Tensor::detach);
    let (packed, dims) = pack(
        &q.detach(),
        &k.detach(),
        &v.detach(),
        rel.as_ref(),
        grid,
        scale,
    )?;
    let lse = packed.apply_op1_no_bwd(&Lse(dims))?;
    let out = packed.apply_op2_no_bwd(&lse, &Out(dims))?;
    Ok((out, Saved { packed, lse, dims }))
}

/// The gradients of q, k, v and (with a bias) the bias terms, in their dtype, given the
/// output of `forward` and its gradient.
pub fn gradients(saved: &Saved, out: &Tensor, dout: &Tensor) -> Result<Vec<Tensor>> {
    let Saved { packed, lse, dims } = saved;
    let flat = packed_grad(packed, out, dout, lse, *dims)?;
    let (m, shape) = (dims.qkv_len(), (dims.bh, dims.n, dims.d));
    let mut grads = (0..3)
        .map(|i| flat.narrow(0, i * m, m)?.reshape(shape))
        .collect::<Result<Vec<_>>>()?;
    if dims.bias {
        let terms = (dims.bh, dims.n, dims.gh + dims.gw);
        grads.push(flat.narrow(0, 3 * m, dims.rel_len())?.reshape(terms)?);
    }
    Ok(grads)
}

/// q, k, v and the bias terms flattened into one tensor, and their dimensions.
fn pack(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rel: Option<&Tensor>,
    (h, w): (usize, usize),
    scale: f64,
) -> Result<(Tensor, Dims)> {
    let (bh, n, hd) = q.dims3()?;
    let dims = Dims {
        bh,
        n,
        d: hd,
        gh: h,
        gw: w,
        bias: rel.is_some(),
        scale: scale as f32,
    };
    if !HEAD_DIMS.contains(&hd) || n != h * w || k.dims() != q.dims() || v.dims() != q.dims() {
        candle_core::bail!(
            "tensor-core attention takes q, k, v of shape (BH, {h} x {w}, D) with D in {HEAD_DIMS:?}, got {:?}, {:?}, {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if let Some(r) = rel {
        if r.dims() != [bh, n, h + w] {
            candle_core::bail!(
                "tensor-core attention takes bias terms of shape ({bh}, {n}, {}), got {:?}",
                h + w,
                r.dims()
            );
        }
    }
    let mut parts = vec![q.flatten_all()?, k.flatten_all()?, v.flatten_all()?];
    parts.extend(rel.map(|r| r.flatten_all()).transpose()?);
    Ok((Tensor::cat(&parts, 0)?, dims))
}

/// The packed inputs' gradient, in their dtype.
fn packed_grad(
    packed: &Tensor,
    out: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
    dims: Dims,
) -> Result<Tensor> {
    let backward = Backward {
        dims,
        lse: lse.clone(),
    };
    packed
        .apply_op3_no_bwd(&out.contiguous()?, &dout.contiguous()?, &backward)?
        .to_dtype(packed.dtype())
}

/// Each query's log-sum-exp (BH, N), f32 (f64 for f64 on the CPU), from the packed
/// inputs.
struct Lse(Dims);

/// The output (BH, N, D) from the packed inputs and the log-sum-exp.
struct Out(Dims);

/// The packed inputs' gradient (dq, dk, dv, then the bias terms'), f32, from the packed
/// inputs, the output and its gradient.
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
        packed: &candle_core::CpuStorage,
        l: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        let lse = cpu::lse(&cpu::values(packed, l)?, self.0);
        Ok((
            cpu::stored_wide(lse, packed),
            Shape::from((self.0.bh, self.0.n)),
        ))
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
        packed: &candle_core::CpuStorage,
        l: &Layout,
        lse: &candle_core::CpuStorage,
        ll: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        let out = cpu::out(&cpu::values(packed, l)?, &cpu::values(lse, ll)?, self.0);
        let shape = Shape::from((self.0.bh, self.0.n, self.0.d));
        Ok((cpu::stored(out, packed), shape))
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
        Ok((out, Shape::from((self.0.bh, self.0.n, self.0.d))))
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "msa-flash-tc-backward"
    }

    fn cpu_fwd(
        &self,
        packed: &candle_core::CpuStorage,
        l: &Layout,
        out: &candle_core::CpuStorage,
        lo: &Layout,
        dout: &candle_core::CpuStorage,
        ld: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        let lse = self
            .lse
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let grads = cpu::backward(
            &cpu::values(packed, l)?,
            &cpu::values(out, lo)?,
            &cpu::values(dout, ld)?,
            &lse,
            self.dims,
        );
        Ok((
            cpu::stored(grads, packed),
            Shape::from(self.dims.packed_len()),
        ))
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

/// The same maths on the CPU, in f64, one row at a time: the reference the tests run the
/// model's wiring against (the kernels themselves are checked by tests/flash_tc_emulated.rs).
mod cpu {
    use super::Dims;
    pub(super) use crate::kernels::{f64_values as values, from_f64 as stored};
    use candle_core::CpuStorage;

    /// `v` in f64 for f64 inputs, else f32 (statistics: f16 would lose the exponent's
    /// precision).
    pub(super) fn stored_wide(v: Vec<f64>, like: &CpuStorage) -> CpuStorage {
        match like {
            CpuStorage::F64(_) => CpuStorage::F64(v),
            _ => CpuStorage::F32(v.into_iter().map(|x| x as f32).collect()),
        }
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// The parts of a packed input, and the score of query row i against key j (rows of
    /// the whole (BH, N) range, j within i's head).
    struct Parts<'a> {
        q: &'a [f64],
        k: &'a [f64],
        v: &'a [f64],
        rel: &'a [f64],
        dm: Dims,
    }

    impl<'a> Parts<'a> {
        fn of(p: &'a [f64], dm: Dims) -> Self {
            let m = dm.qkv_len();
            Self {
                q: &p[..m],
                k: &p[m..2 * m],
                v: &p[2 * m..3 * m],
                rel: &p[3 * m..],
                dm,
            }
        }

        fn row<'b>(&self, t: &'b [f64], r: usize) -> &'b [f64] {
            let d = self.dm.d;
            &t[r * d..(r + 1) * d]
        }

        fn score(&self, i: usize, key: usize) -> f64 {
            let dm = self.dm;
            let j = key % dm.n;
            let mut s = dm.scale as f64 * dot(self.row(self.q, i), self.row(self.k, key));
            if dm.bias {
                let g = dm.gh + dm.gw;
                s += self.rel[i * g + j / dm.gw] + self.rel[i * g + dm.gh + j % dm.gw];
            }
            s
        }

        /// The keys of query row i's head.
        fn keys(&self, i: usize) -> std::ops::Range<usize> {
            let head = i / self.dm.n * self.dm.n;
            head..head + self.dm.n
        }
    }

    pub(super) fn lse(packed: &[f64], dm: Dims) -> Vec<f64> {
        let p = Parts::of(packed, dm);
        (0..dm.bh * dm.n)
            .map(|i| {
                let s: Vec<f64> = p.keys(i).map(|key| p.score(i, key)).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
            })
            .collect()
    }

    pub(super) fn out(packed: &[f64], lse: &[f64], dm: Dims) -> Vec<f64> {
        let p = Parts::of(packed, dm);
        let mut out = vec![0.0; dm.qkv_len()];
        for (i, o) in out.chunks_mut(dm.d).enumerate() {
            for key in p.keys(i) {
                let pr = (p.score(i, key) - lse[i]).exp();
                o.iter_mut()
                    .zip(p.row(p.v, key))
                    .for_each(|(a, x)| *a += pr * x);
            }
        }
        out
    }

    /// dq, dk, dv and the bias terms' gradient, one after the other.
    pub(super) fn backward(
        packed: &[f64],
        out: &[f64],
        dout: &[f64],
        lse: &[f64],
        dm: Dims,
    ) -> Vec<f64> {
        let p = Parts::of(packed, dm);
        let (m, g, scale, d) = (dm.qkv_len(), dm.gh + dm.gw, dm.scale as f64, dm.d);
        let mut grads = vec![0.0; dm.packed_len()];
        let (dq, rest) = grads.split_at_mut(m);
        let (dk, rest) = rest.split_at_mut(m);
        let (dv, drel) = rest.split_at_mut(m);
        for i in 0..dm.bh * dm.n {
            let dor = p.row(dout, i);
            let delta = dot(dor, p.row(out, i));
            for key in p.keys(i) {
                let pr = (p.score(i, key) - lse[i]).exp();
                let ds = pr * (dot(dor, p.row(p.v, key)) - delta);
                for c in 0..d {
                    dq[i * d + c] += scale * ds * p.k[key * d + c];
                    dk[key * d + c] += scale * ds * p.q[i * d + c];
                    dv[key * d + c] += pr * dor[c];
                }
                if dm.bias {
                    let j = key % dm.n;
                    drel[i * g + j / dm.gw] += ds;
                    drel[i * g + dm.gh + j % dm.gw] += ds;
                }
            }
        }
        grads
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::Dims;
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

    // The tile sizes of cuda/flash_tc.cu, for the shared memory each kernel needs; `t` is
    // the element size, `d` the head width (a T tile's rows are d + 8 long).
    const WARPS: usize = 4;
    const ROWS: usize = WARPS * 16;
    const TK: usize = 64;
    const TB: usize = 32;
    const DEFAULT_SHARED: usize = 48 * 1024;
    const MAX_SHARED: usize = 227 * 1024;
    const T: usize = 2;

    fn forward_shared(d: usize) -> usize {
        2 * TK * (d + 8) * T + WARPS * 16 * (TK + 4) * 4 + WARPS * 16 * (TK + 8) * T
    }

    fn backward_shared(d: usize) -> usize {
        2 * TB * (d + 8) * T + WARPS * 16 * 2 * (TB + 4) * 4 + WARPS * 16 * (TB + 8) * T
    }

    fn dq_shared(d: usize, g: usize) -> usize {
        backward_shared(d) + ROWS * g * 4
    }

    fn dkv_shared(d: usize) -> usize {
        backward_shared(d) + 2 * TB * 4
    }

    /// Kernel `name` for dtype `t` and head width `d`, allowed `shared` bytes of dynamic
    /// shared memory.
    fn kernel(
        dev: &CudaDevice,
        name: &str,
        (t, d): (DType, usize),
        shared: usize,
    ) -> Result<CudaFunction> {
        if shared > MAX_SHARED {
            candle_core::bail!(
                "tensor-core attention: {name} needs {shared} bytes of shared memory, more than {MAX_SHARED}"
            );
        }
        let suffix = match t {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            other => candle_core::bail!("tensor-core attention takes bf16 or f16, not {other:?}"),
        };
        let f = dev
            .get_or_load_custom_func(&format!("{name}_{suffix}_d{d}"), MODULE, PTX)?
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
            candle_core::Error::Msg("tensor-core attention needs contiguous inputs".into())
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
                    "tensor-core attention: packed input of {} values, expected {}",
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
            other => candle_core::bail!("tensor-core attention takes bf16 or f16, not {other:?}"),
        }
    }

    fn lse_typed<T: CudaDType + DeviceRepr>(
        s: &CudaStorage,
        l: &Layout,
        dm: Dims,
    ) -> Result<CudaStorage> {
        let dev = s.device();
        let p = Packed::<T>::of(s, l, dm)?;
        let shared = forward_shared(dm.d);
        let f = kernel(dev, "flash_lse", (s.dtype(), dm.d), shared)?;
        let mut lse = dev.alloc_zeros::<f32>(dm.bh * dm.n)?;
        let (n, gh, gw) = ints(dm);
        let null = 0u64;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&p.q).arg(&p.k);
        push_rel(&mut b, &p.rel, &null);
        b.arg(&mut lse).arg(&n).arg(&gh).arg(&gw).arg(&dm.scale);
        // SAFETY: the views hold (BH, N, D) rows and (BH, N, gh + gw) terms, lse BH * N.
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
            other => candle_core::bail!("tensor-core attention takes bf16 or f16, not {other:?}"),
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
        let shared = forward_shared(dm.d);
        let f = kernel(dev, "flash_out", (s.dtype(), dm.d), shared)?;
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
        // SAFETY: as in `lse_typed`; out holds (BH, N, D).
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
            candle_core::bail!("tensor-core attention: the log-sum-exp is not on the GPU");
        };
        let lse = view::<f32>(lse_s, lse_l)?;
        match s.dtype() {
            DType::BF16 => backward_typed::<half::bf16>((s, l), (o, lo), (d, ld), &lse, dm),
            DType::F16 => backward_typed::<half::f16>((s, l), (o, lo), (d, ld), &lse, dm),
            other => candle_core::bail!("tensor-core attention takes bf16 or f16, not {other:?}"),
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
        let delta = row_deltas(dev, (t, dm.d), &out, &dout, rows)?;
        let mut grads = dev.alloc_zeros::<f32>(dm.packed_len())?;
        let m = dm.qkv_len();
        let (mut dq, mut rest) = grads.split_at_mut(m);
        let (mut dk, mut rest) = rest.split_at_mut(m);
        let (mut dv, mut drel) = rest.split_at_mut(m);
        let (n, gh, gw) = ints(dm);
        let null = 0u64;

        let shared = dq_shared(dm.d, dm.gh + dm.gw);
        let f = kernel(dev, "flash_dq", (t, dm.d), shared)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&p.q).arg(&p.k).arg(&p.v).arg(&dout);
        push_rel(&mut b, &p.rel, &null);
        b.arg(lse).arg(&delta).arg(&mut dq).arg(&mut drel);
        b.arg(&n).arg(&gh).arg(&gw).arg(&dm.scale);
        // SAFETY: every view has the rows the kernel reads; dq holds (BH, N, D), drel the
        // bias terms' shape (empty and unused without a bias).
        unsafe { b.launch(config(row_tiles(dm), shared)) }.w()?;

        let shared = dkv_shared(dm.d);
        let f = kernel(dev, "flash_dkv", (t, dm.d), shared)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&p.q).arg(&p.k).arg(&p.v).arg(&dout);
        push_rel(&mut b, &p.rel, &null);
        b.arg(lse).arg(&delta).arg(&mut dk).arg(&mut dv);
        b.arg(&n).arg(&gh).arg(&gw).arg(&dm.scale);
        // SAFETY: as above; dk and dv hold (BH, N, D).
        unsafe { b.launch(config(row_tiles(dm), shared)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(grads, dev.clone()))
    }

    /// delta_i = dO_i . O_i for every query row.
    fn row_deltas<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        t: (DType, usize),
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
        // SAFETY: out and dout hold `rows` rows of the head width, delta `rows` values.
        unsafe { b.launch(config((rows.div_ceil(WARPS), 1), 0)) }.w()?;
        Ok(delta)
    }
}
