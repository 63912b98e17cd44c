//! The backward passes of frozen layers as one CUDA kernel each (`cuda/backward.cu`), for
//! `model::own_backward` on GPUs: LayerNorm, softmax, and the activation between an MLP's
//! layers. candle's composed ops take a dozen kernels and as many f32 copies of the map for
//! each. Inputs and outputs keep their dtype (f32, bf16 or f16); the arithmetic is f32.
//! tests/fused_backward_emulated.rs checks the kernels on the CPU; tests/own_backward.rs
//! checks them on a GPU against candle's autograd.

use candle_core::{CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// Whether the kernels serve `t`: a CUDA build and a GPU tensor.
pub fn serves(t: &Tensor) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda()
}

/// dx of LayerNorm over the last dim, with weight `w`, at input `x`, given dy.
pub fn layer_norm(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
    let (x, dy) = (x.contiguous()?, dy.contiguous()?);
    x.apply_op3_no_bwd(&w.contiguous()?, &dy, &LayerNormBackward(eps as f32))
}

/// dx of softmax over the last dim, given its output y and dy.
pub fn softmax(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    y.contiguous()?
        .apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBackward)
}

/// dz = dh act'(z) for GELU (erf) or ReLU.
pub fn activation(z: &Tensor, dh: &Tensor, gelu: bool) -> Result<Tensor> {
    z.contiguous()?
        .apply_op2_no_bwd(&dh.contiguous()?, &ActivationBackward { gelu })
}

fn cuda_only<T>(what: &str) -> Result<T> {
    candle_core::bail!("{what} runs on CUDA GPUs only")
}

// The CPU build only type-checks the ops around the CUDA launches.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct LayerNormBackward(f32);
struct SoftmaxBackward;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct ActivationBackward {
    gelu: bool,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "msa-layer-norm-backward"
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
        x: &candle_core::CudaStorage,
        lx: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
        dy: &candle_core::CudaStorage,
        ld: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dx = cuda::layer_norm((x, lx), (w, lw), (dy, ld), self.0)?;
        Ok((dx, lx.shape().clone()))
    }
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "msa-softmax-backward"
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
        y: &candle_core::CudaStorage,
        ly: &Layout,
        dy: &candle_core::CudaStorage,
        ld: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dx = cuda::rows("softmax_bwd", (y, ly), (dy, ld))?;
        Ok((dx, ly.shape().clone()))
    }
}

impl CustomOp2 for ActivationBackward {
    fn name(&self) -> &'static str {
        "msa-activation-backward"
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
        z: &candle_core::CudaStorage,
        lz: &Layout,
        dh: &candle_core::CudaStorage,
        ld: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dz = cuda::activation((z, lz), (dh, ld), self.gelu)?;
        Ok((dz, lz.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
    use candle_core::{DType, Layout, Result};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/backward.ptx"));
    const MODULE: &str = "msa_backward";
    /// Rows per block in the row kernels (one warp each).
    const WARPS: usize = 8;

    type In<'a> = (&'a CudaStorage, &'a Layout);

    fn view<'a, T: CudaDType + DeviceRepr>((s, l): In<'a>) -> Result<CudaView<'a, T>> {
        let (a, b) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("a fused backward pass needs contiguous inputs".into())
        })?;
        Ok(s.as_cuda_slice::<T>()?.slice(a..b))
    }

    fn kernel(s: &CudaStorage, name: &str) -> Result<CudaFunction> {
        let suffix = match s.dtype() {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            other => candle_core::bail!("{name}: no kernel for {other:?}"),
        };
        Ok(s.device()
            .get_or_load_custom_func(&format!("{name}_{suffix}"), MODULE, PTX)?
            .into_cuda_function())
    }

    fn same(name: &str, a: In, b: In) -> Result<()> {
        if a.0.dtype() != b.0.dtype() || a.1.shape() != b.1.shape() {
            candle_core::bail!(
                "{name}: inputs {:?} {:?} and {:?} {:?} differ",
                a.0.dtype(),
                a.1.dims(),
                b.0.dtype(),
                b.1.dims()
            );
        }
        Ok(())
    }

    /// (rows, cols) of a map normalised over its last dim.
    fn rows_cols(l: &Layout) -> (usize, usize) {
        let cols = l.dims().last().copied().unwrap_or(1).max(1);
        (l.shape().elem_count() / cols, cols)
    }

    fn row_config(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows.div_ceil(WARPS).max(1) as u32, 1, 1),
            block_dim: ((WARPS * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    pub(super) fn layer_norm(x: In, w: In, dy: In, eps: f32) -> Result<CudaStorage> {
        same("LayerNorm backward", x, dy)?;
        match x.0.dtype() {
            DType::F32 => layer_norm_typed::<f32>(x, w, dy, eps),
            DType::BF16 => layer_norm_typed::<half::bf16>(x, w, dy, eps),
            DType::F16 => layer_norm_typed::<half::f16>(x, w, dy, eps),
            other => candle_core::bail!("LayerNorm backward: no kernel for {other:?}"),
        }
    }

    fn layer_norm_typed<T: CudaDType + DeviceRepr>(
        x: In,
        w: In,
        dy: In,
        eps: f32,
    ) -> Result<CudaStorage> {
        let (rows, cols) = rows_cols(x.1);
        if w.0.dtype() != x.0.dtype() || w.1.shape().elem_count() != cols {
            candle_core::bail!(
                "LayerNorm backward: weight {:?} {:?} for rows of {cols} {:?}",
                w.0.dtype(),
                w.1.dims(),
                x.0.dtype()
            );
        }
        let dev = x.0.device();
        let f = kernel(x.0, "layer_norm_bwd")?;
        // SAFETY: the kernel writes every element.
        let mut dx = unsafe { dev.alloc::<T>(rows * cols) }?;
        let (xv, wv, gv) = (view::<T>(x)?, view::<T>(w)?, view::<T>(dy)?);
        let (r, c) = (rows as i32, cols as i32);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv)
            .arg(&wv)
            .arg(&gv)
            .arg(&mut dx)
            .arg(&r)
            .arg(&c)
            .arg(&eps);
        // SAFETY: x, dy and dx hold rows x cols values, w cols.
        unsafe { b.launch(row_config(rows)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
    }

    /// A row kernel of two same-shaped inputs (`softmax_bwd`).
    pub(super) fn rows(name: &str, a: In, b: In) -> Result<CudaStorage> {
        same(name, a, b)?;
        match a.0.dtype() {
            DType::F32 => rows_typed::<f32>(name, a, b),
            DType::BF16 => rows_typed::<half::bf16>(name, a, b),
            DType::F16 => rows_typed::<half::f16>(name, a, b),
            other => candle_core::bail!("{name}: no kernel for {other:?}"),
        }
    }

    fn rows_typed<T: CudaDType + DeviceRepr>(name: &str, a: In, b: In) -> Result<CudaStorage> {
        let (rows, cols) = rows_cols(a.1);
        let dev = a.0.device();
        let f = kernel(a.0, name)?;
        // SAFETY: the kernel writes every element.
        let mut out = unsafe { dev.alloc::<T>(rows * cols) }?;
        let (av, bv) = (view::<T>(a)?, view::<T>(b)?);
        let (r, c) = (rows as i32, cols as i32);
        let stream = dev.cuda_stream();
        let mut l = stream.launch_builder(&f);
        l.arg(&av).arg(&bv).arg(&mut out).arg(&r).arg(&c);
        // SAFETY: both inputs and the output hold rows x cols values.
        unsafe { l.launch(row_config(rows)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }

    pub(super) fn activation(z: In, dh: In, gelu: bool) -> Result<CudaStorage> {
        same("activation backward", z, dh)?;
        match z.0.dtype() {
            DType::F32 => activation_typed::<f32>(z, dh, gelu),
            DType::BF16 => activation_typed::<half::bf16>(z, dh, gelu),
            DType::F16 => activation_typed::<half::f16>(z, dh, gelu),
            other => candle_core::bail!("activation backward: no kernel for {other:?}"),
        }
    }

    fn activation_typed<T: CudaDType + DeviceRepr>(
        z: In,
        dh: In,
        gelu: bool,
    ) -> Result<CudaStorage> {
        let n = z.1.shape().elem_count();
        let dev = z.0.device();
        let f = kernel(z.0, "activation_bwd")?;
        // SAFETY: the kernel writes every element.
        let mut dz = unsafe { dev.alloc::<T>(n) }?;
        let (zv, gv) = (view::<T>(z)?, view::<T>(dh)?);
        let (count, gelu) = (n as u64, gelu as i32);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&zv).arg(&gv).arg(&mut dz).arg(&count).arg(&gelu);
        // SAFETY: z, dh and dz hold n values.
        unsafe { b.launch(LaunchConfig::for_num_elems(n as u32)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(dz, dev.clone()))
    }
}
