//! Times single ops at the shapes of LiteMedSAM's stage 0.
use candle_core::{Device, Tensor};
use msa::kernels::depthwise::{DepthwiseConv, DepthwiseGeometry};
use msa::model::nn::{gelu, Linear};
use std::time::Instant;

#[path = "shared/timing.rs"]
mod timing;

/// This example's timer: 5 runs after a warm-up.
fn time<T>(label: &str, f: impl Fn() -> candle_core::Result<T>) -> candle_core::Result<T> {
    timing::time(label, 5, f)
}

fn main() -> anyhow::Result<()> {
    msa::runtime::init();
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1f32, (1, 256, 256, 64), &d)?;
    let l1 = Linear {
        weight: Tensor::randn(0f32, 0.1, (256, 64), &d)?,
        bias: Some(Tensor::zeros(256, candle_core::DType::F32, &d)?),
    };
    let l3 = Linear {
        weight: Tensor::randn(0f32, 0.1, (64, 256), &d)?,
        bias: Some(Tensor::zeros(64, candle_core::DType::F32, &d)?),
    };
    if std::env::var_os("MLP_ONLY").is_some() {
        return mlp_shapes();
    }
    let h = time("conv1 64->256 gemm", || l1.forward(&x))?;
    let h = time("gelu 16.7M", || gelu(&h))?;
    let taps = Tensor::randn(0f32, 0.1, (9, 256), &d)?;
    let b = Tensor::zeros(256, candle_core::DType::F32, &d)?;
    let g = DepthwiseGeometry {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let h2 = time("dw3x3 256ch", || h.apply_op3(&taps, &b, DepthwiseConv(g)))?;
    let y = time("conv3 256->64 gemm", || l3.forward(&h2))?;
    let y = time("add residual", || &y + &x)?;
    time("gelu 4M", || gelu(&y))?;
    mlp_shapes()?;
    Ok(())
}

#[allow(dead_code)]
fn neck_parts() -> anyhow::Result<()> {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1f32, (1, 64, 64, 256), &d)?;
    let taps = Tensor::randn(0f32, 0.05, (9, 256, 256), &d)?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let t = taps.flatten_all()?.to_vec1::<f32>()?;
    time("conv3x3 kernel", || {
        Ok(msa::kernels::conv3x3::conv3x3(
            &xs,
            (1, 64, 64, 256),
            &t,
            None,
        ))
    })?;
    let w = Tensor::randn(0f32, 0.05, (256, 256, 3, 3), &d)?;
    let xc = x.permute((0, 3, 1, 2))?.contiguous()?;
    time("candle conv2d", || xc.conv2d(&w, 1, 1, 1, 1))?;
    let lnw = Tensor::ones(256, candle_core::DType::F32, &d)?;
    let lnb = Tensor::zeros(256, candle_core::DType::F32, &d)?;
    time("candle layer_norm", || {
        candle_nn::ops::layer_norm(&x, &lnw, &lnb, 1e-6)
    })?;
    time("to channels first", || {
        x.permute((0, 3, 1, 2))?.contiguous()
    })?;
    Ok(())
}

#[allow(dead_code)]
fn mlp_shapes() -> anyhow::Result<()> {
    use msa::kernels::linear::Epilogue;
    let d = Device::Cpu;
    for (rows, cin, cout) in [
        (4096, 256, 128),
        (4096, 128, 256),
        (4096, 320, 1280),
        (16384, 512, 128),
    ] {
        let x = Tensor::randn(0f32, 1f32, (1, rows, cin), &d)?;
        let l = Linear {
            weight: Tensor::randn(0f32, 0.1, (cout, cin), &d)?,
            bias: Some(Tensor::zeros(cout, candle_core::DType::F32, &d)?),
        };
        let gmac = (rows * cin * cout) as f64 / 1e9;
        let t0 = Instant::now();
        for _ in 0..5 {
            l.forward_act(&x, None, Epilogue::Gelu)?;
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / 5.0;
        println!(
            "{rows}x{cin}->{cout} +gelu {ms:.1} ms, {:.1} GMAC/s",
            gmac / ms * 1e3
        );
        let wt = l.weight.t()?.contiguous()?;
        let x2 = x.reshape((rows, cin))?;
        let t0 = Instant::now();
        for _ in 0..5 {
            x2.matmul(&wt)?;
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / 5.0;
        println!("   candle matmul {ms:.1} ms, {:.1} GMAC/s", gmac / ms * 1e3);
    }
    Ok(())
}
