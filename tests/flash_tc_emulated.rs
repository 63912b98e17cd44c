//! The tensor-core flash attention (`src/kernels/cuda/flash_tc.cu`), run on the CPU: the
//! kernel source is compiled with the system's C++ compiler against `tests/cuda_emu`, a
//! small emulation of the CUDA and WMMA calls it makes, and every kernel (log-sum-exp,
//! output, delta, dq with the bias gradient, dk and dv) is checked against direct sums in
//! double, with SAM's bias, on grids whose token counts leave partial tiles. This checks the
//! kernels' indexing, tiling and maths on any machine; on a GPU, tests/flash_attention.rs
//! checks the compiled kernels against candle's ops.

use std::path::Path;
use std::process::Command;

#[test]
fn tensor_core_flash_attention_kernels_match_direct_sums_when_emulated() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flash_tc_check");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-DMSA_EMULATE", "-pthread"])
        .arg("-I")
        .arg(repo.join("tests/cuda_emu"))
        .arg("-I")
        .arg(repo.join("src/kernels/cuda"))
        .arg("-o")
        .arg(&exe)
        .arg(repo.join("tests/cuda_emu/flash_tc_check.cpp"))
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
        "kernels and direct sums differ:\n{report}"
    );
    assert!(report.contains("drel"), "the bias gradient was checked");
}
