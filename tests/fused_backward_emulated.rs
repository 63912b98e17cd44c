//! The fused backward kernels of frozen layers (`src/kernels/cuda/backward.cu`: LayerNorm,
//! softmax, GELU and ReLU), run on the CPU: compiled with the system's C++ compiler against
//! `tests/cuda_emu` and checked against their formulas in double, in f32 and bf16, on rows
//! narrower and wider than a warp. On a GPU, tests/own_backward.rs checks the compiled
//! kernels against candle's autograd.

mod common;

#[test]
fn fused_backward_kernels_match_their_formulas_when_emulated() {
    let report = common::run_emulated("backward_check");
    assert_eq!(report.matches("layer_norm").count(), 6, "every case ran");
}
