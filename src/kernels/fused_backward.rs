//! The backward passes of frozen layers as one CUDA kernel each (`cuda/backward.cu`), for
//! `model::own_backward` on GPUs: LayerNorm, softmax, and the activation between an MLP's
//! layers. candle's composed ops take a dozen kernels and as many f32 copies of the map for
//! each. Inputs and outputs keep their dtype (f32, bf16 or f16); the arithmetic is f32.
//! On the CPU the same formulas run as loops in f64, so that the CPU's generic path takes
//! the GPU's ops one for one. tests/fused_backward_emulated.rs checks the kernels on the
//! CPU; tests/own_backward.rs checks the ops against candle's autograd on either device.

use candle_core::{CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

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

struct LayerNormBackward(f32);
struct SoftmaxBackward;
struct ActivationBackward {
    gelu: bool,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "msa-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        lx: &Layout,
        w: &candle_core::CpuStorage,
        lw: &Layout,
        dy: &candle_core::CpuStorage,
        ld: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        let (x64, w64, g64) = (
            cpu::values(x, lx)?,
            cpu::values(w, lw)?,
            cpu::values(dy, ld)?,
        );
        let dx = cpu::layer_norm(&x64, &w64, &g64, self.0 as f64);
        Ok((cpu::stored(dx, x), lx.shape().clone()))
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
        y: &candle_core::CpuStorage,
        ly: &Layout,
        dy: &candle_core::CpuStorage,
        ld: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        let cols = ly.dims().last().copied().unwrap_or(1).max(1);
        let dx = cpu::softmax(&cpu::values(y, ly)?, &cpu::values(dy, ld)?, cols);
        Ok((cpu::stored(dx, y), ly.shape().clone()))
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
        z: &candle_core::CpuStorage,
        lz: &Layout,
        dh: &candle_core::CpuStorage,
        ld: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        let dz = cpu::activation(&cpu::values(z, lz)?, &cpu::values(dh, ld)?, self.gelu);
        Ok((cpu::stored(dz, z), lz.shape().clone()))
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

/// The kernels' formulas as loops, in f64.
mod cpu {
    pub(super) use crate::kernels::{f64_values as values, from_f64 as stored};

    fn rows(x: &[f64], cols: usize) -> impl Iterator<Item = &[f64]> {
        x.chunks(cols.max(1))
    }

    pub(super) fn layer_norm(x: &[f64], w: &[f64], dy: &[f64], eps: f64) -> Vec<f64> {
        let cols = w.len().max(1);
        let mut dx = Vec::with_capacity(x.len());
        for (xr, gr) in rows(x, cols).zip(rows(dy, cols)) {
            let mean = xr.iter().sum::<f64>() / cols as f64;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            let g: Vec<f64> = gr.iter().zip(w).map(|(a, b)| a * b).collect();
            let xhat: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
            let mean_g = g.iter().sum::<f64>() / cols as f64;
            let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
            dx.extend(
                g.iter()
                    .zip(&xhat)
                    .map(|(g, xh)| rstd * (g - mean_g - xh * mean_gx)),
            );
        }
        dx
    }

    pub(super) fn softmax(y: &[f64], dy: &[f64], cols: usize) -> Vec<f64> {
        let mut dx = Vec::with_capacity(y.len());
        for (yr, gr) in rows(y, cols).zip(rows(dy, cols)) {
            let dot: f64 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            dx.extend(yr.iter().zip(gr).map(|(y, g)| y * (g - dot)));
        }
        dx
    }

    pub(super) fn activation(z: &[f64], dh: &[f64], gelu: bool) -> Vec<f64> {
        let inv_sqrt_2pi = 0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2;
        z.iter()
            .zip(dh)
            .map(|(&x, g)| {
                let d = if gelu {
                    0.5 * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2))
                        + x * inv_sqrt_2pi * (-0.5 * x * x).exp()
                } else if x > 0.0 {
                    1.0
                } else {
                    0.0
                };
                g * d
            })
            .collect()
    }

    fn erf(x: f64) -> f64 {
        candle_core::cpu::erf::erf_f64(x)
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
