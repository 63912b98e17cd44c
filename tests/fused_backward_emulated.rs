//! The fused backward kernels of frozen layers (`src/kernels/cuda/backward.cu`: LayerNorm,
//! softmax, GELU and ReLU), run on the CPU: compiled with the system's C++ compiler against
//! `tests/cuda_emu` and checked against their formulas in double, in f32 and bf16, on rows
//! narrower and wider than a warp. On a GPU, tests/own_backward.rs checks the compiled
//! kernels against candle's autograd.

use std::path::Path;
use std::process::Command;

#[test]
fn fused_backward_kernels_match_their_formulas_when_emulated() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("backward_check");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-DMSA_EMULATE", "-pthread"])
        .arg("-I")
        .arg(repo.join("tests/cuda_emu"))
        .arg("-I")
        .arg(repo.join("src/kernels/cuda"))
        .arg("-o")
        .arg(&exe)
        .arg(repo.join("tests/cuda_emu/backward_check.cpp"))
        .output()
        .unwrap_or_else(|e| panic!("running the C++ compiler `{cxx}` (set CXX): {e}"));
    assert!(
        built.status.success(),
        "compiling the emulated kernels failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe)
        .output()
        .expect("the emulated kernels run");
    let report = String::from_utf8_lossy(&run.stdout);
    eprintln!("{report}");
    assert!(
        run.status.success(),
        "kernels and formulas differ:\n{report}"
    );
    assert_eq!(report.matches("layer_norm").count(), 6, "every case ran");
}
