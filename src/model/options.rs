//! What a model is built with besides its weights: the kernel its attention runs on and
//! the dtype its frozen image encoder computes in. Given at load time, read by the layers.

use crate::kernels::attention::{flash, tensor_cores};
use candle_core::DType;

/// The kernel SAM's attention layers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// The CPU's own attention op on the CPU in f32, candle's ops elsewhere.
    #[default]
    Standard,
    /// `kernels::attention::flash` in the encoder and the decoder, on any device (on the
    /// CPU, to check it).
    Flash,
    /// `kernels::attention::tensor_cores` in the encoder where it can run (GPUs, bf16 or
    /// f16; on the CPU in other dtypes than f32, its reference loops), `Standard` elsewhere.
    TensorCores,
}

impl AttentionKernel {
    /// The kernel the environment asks for: `MSA_FLASH_ATTENTION=1` or
    /// `MSA_TENSOR_CORE_ATTENTION=1`, else `Standard`.
    pub fn from_env() -> Self {
        if flash::enabled() {
            AttentionKernel::Flash
        } else if tensor_cores::enabled() {
            AttentionKernel::TensorCores
        } else {
            AttentionKernel::Standard
        }
    }
}

/// How the layers of a model compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    pub attention: AttentionKernel,
    /// The dtype of the frozen image encoder (`--precision`): its frozen tensors are read
    /// in it, while trainable ones, and every tensor under full fine-tuning, stay f32.
    pub encoder_dtype: DType,
}

impl Default for ModelOptions {
    /// The attention kernel the environment asks for, and an f32 encoder.
    fn default() -> Self {
        Self {
            attention: AttentionKernel::from_env(),
            encoder_dtype: DType::F32,
        }
    }
}
