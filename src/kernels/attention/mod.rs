//! Attention kernels: on the CPU, SAM's biased attention as one op (`cpu`) with its
//! backward pass (`cpu_backward`); flash attention tiled without an attention matrix, as
//! CPU loops and a SIMT CUDA kernel (`flash`, `flash_cuda`); and the encoder's attention on
//! tensor cores (`tensor_cores`).

pub mod cpu;
pub mod cpu_backward;
pub mod flash;
#[cfg(feature = "cuda")]
mod flash_cuda;
mod flash_dims;
pub mod tensor_cores;
