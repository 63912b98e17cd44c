//! In a `--features cuda` build, compiles the tensor-core attention kernels
//! (src/kernels/cuda/flash_tc.cu) to PTX with nvcc, for the GPU generation in
//! CUDA_COMPUTE_CAP (default 90). Below 80 (no bf16 tensor cores) the PTX is left empty
//! and the model keeps candle's attention. The CPU build needs nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/kernels/cuda/flash_tc.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("flash_tc.ptx");
    let cap: u32 = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(90);
    if cap < 80 {
        std::fs::write(&out, "").expect("writing an empty PTX");
        return;
    }
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("-arch=sm_{cap}"),
            "-o",
        ])
        .arg(&out)
        .arg("src/kernels/cuda/flash_tc.cu")
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc} (set NVCC, or put nvcc on PATH): {e}"));
    assert!(
        status.success(),
        "{nvcc} failed on src/kernels/cuda/flash_tc.cu"
    );
}
