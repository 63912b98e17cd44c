//! Our own kernels, used where a profile showed that candle's general ops spend most of the
//! time allocating and re-reading large intermediates: hand-written CPU loops, CUDA kernels
//! for the attention and the frozen layers' backward passes (`cuda/`), and the custom-op
//! plumbing that gives a layer one node in candle's graph (`backward_op`).

pub mod adam;
pub mod attention;
pub mod backward_op;
mod common;
pub mod conv3x3;
pub mod depthwise;
pub mod fused_backward;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub mod simd;
pub mod softmax;
pub mod windows;

pub(crate) use common::{
    affine_operands, f64_values, from_f64, gemm_into, grad_like, storage_slice, storage_slice_mut,
    Mat,
};
pub use common::{ordered_reduce, par_filled, with_opt_slice, with_slice, MAX_GROUPS};
