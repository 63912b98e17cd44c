//! In a `--features cuda` build, compiles this project's CUDA kernels (src/kernels/cuda/*.cu
//! other than attention.cu, which NVRTC compiles at run time) to PTX with nvcc, for the GPU
//! generation in CUDA_COMPUTE_CAP (default 90). The tensor-core attention needs 80 or more;
//! below that its PTX is left empty and the model keeps candle's attention. The CPU build
//! needs nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (source, minimum compute capability)
const KERNELS: [(&str, u32); 2] = [("flash_tc", 80), ("backward", 0)];

fn main() {
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-changed=src/kernels/cuda/convert.cuh");
    for (name, _) in KERNELS {
        println!("cargo:rerun-if-changed=src/kernels/cuda/{name}.cu");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap: u32 = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(90);
    for (name, min_cap) in KERNELS {
        let out = out_dir.join(format!("{name}.ptx"));
        if cap < min_cap {
            std::fs::write(&out, "").expect("writing an empty PTX");
        } else {
            nvcc(&format!("src/kernels/cuda/{name}.cu"), &out, cap);
        }
    }
}

fn nvcc(source: &str, out: &Path, cap: u32) {
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("-arch=sm_{cap}"),
            "-o",
        ])
        .arg(out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc} (set NVCC, or put nvcc on PATH): {e}"));
    assert!(status.success(), "{nvcc} failed on {source}");
}
