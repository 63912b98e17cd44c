//! SAM's neck, which both backbones end in: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d,
//! on channels-last maps.

use super::nn::{to_channels_first, Conv3x3, LayerNorm, Linear};
use crate::params::Params;
use candle_core::{Result, Tensor};

#[derive(Debug, Clone)]
pub struct Neck {
    pub conv1: Linear,
    pub ln1: LayerNorm,
    pub conv2: Conv3x3,
    pub ln2: LayerNorm,
}

impl Neck {
    /// From `c` encoder channels to `o` embedding channels.
    pub fn load(p: &Params, c: usize, o: usize) -> Result<Self> {
        let w1 = p.get("0.weight", &[o, c, 1, 1])?.reshape((o, c))?;
        Ok(Self {
            conv1: Linear {
                weight: w1,
                bias: None,
            },
            ln1: LayerNorm::load(&p.pp("1"), o, 1e-6)?,
            conv2: Conv3x3::load(&p.pp("2"), o, o)?,
            ln2: LayerNorm::load(&p.pp("3"), o, 1e-6)?,
        })
    }

    /// (B, H, W, C) -> (B, out_chans, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.ln1.forward(&self.conv1.forward(x)?)?;
        let x = self.conv2.forward(&x)?;
        let x = self.ln2.forward(&x)?;
        to_channels_first(&x)?.contiguous()
    }
}
