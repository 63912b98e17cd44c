//! `--precision`: the dtype the frozen image encoder computes in. Adapters, their
//! gradients and Adam's state stay in f32 whatever it is: an adapter takes its input in
//! f32 and hands its output back in the encoder's dtype.

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Bf16,
    F16,
    F32,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
            Precision::F32 => DType::F32,
        }
    }

    /// The precision an encoder dtype stands for (None: f32, what loading defaults to).
    pub fn of(dtype: Option<DType>) -> Precision {
        match dtype {
            Some(DType::BF16) => Precision::Bf16,
            Some(DType::F16) => Precision::F16,
            _ => Precision::F32,
        }
    }

    /// The precision asked for, else the device's default: bf16 on GPUs, f32 on the CPU
    /// (whose fast kernels are f32).
    pub fn resolve(asked: Option<Precision>, device: &Device) -> Result<Precision> {
        match (asked, device) {
            (Some(Precision::Bf16), Device::Cpu) => candle_core::bail!(
                "--precision bf16 needs a GPU (the CPU backend has no bf16 matrix product); \
                 use f16 or f32 on the CPU"
            ),
            (Some(p), _) => Ok(p),
            (None, Device::Cpu) => Ok(Precision::F32),
            (None, _) => Ok(Precision::Bf16),
        }
    }
}

/// `f` applied to `x` in f32, its result back in `x`'s dtype.
pub fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => f(x),
        dt => f(&x.to_dtype(DType::F32)?)?.to_dtype(dt),
    }
}
