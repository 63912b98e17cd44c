//! The tensor-core flash attention (`src/kernels/cuda/flash_tc.cu`), run on the CPU: the
//! kernel source is compiled with the system's C++ compiler against `tests/cuda_emu`, a
//! small emulation of the CUDA and WMMA calls it makes, and every kernel (log-sum-exp,
//! output, delta, dq with the bias gradient, dk and dv) is checked against direct sums in
//! double, with SAM's bias, on grids whose token counts leave partial tiles. This checks the
//! kernels' indexing, tiling and maths on any machine; on a GPU, tests/flash_attention.rs
//! checks the compiled kernels against candle's ops.

mod common;

#[test]
fn tensor_core_flash_attention_kernels_match_direct_sums_when_emulated() {
    let report = common::run_emulated("flash_tc_check");
    assert!(report.contains("drel"), "the bias gradient was checked");
    assert!(
        report.contains("head width 16"),
        "the narrow heads were checked"
    );
}
