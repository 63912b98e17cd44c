//! Hand-written CPU kernels, used where a profile showed that candle's general ops spend
//! most of the time allocating and re-reading large intermediates.

pub mod attention_cpu;
pub mod frozen_linear;
pub mod layer_norm;
pub mod simd;
