//! Two Linear layers with an activation between them (SAM's transformer MLPs), choosing
//! their backend: on the CPU our kernels (for TinyViT's residual form one op for the whole
//! frozen MLP), elsewhere one op with its own backward pass when both layers are frozen and
//! the input needs a gradient, candle's ops otherwise.

use super::{gelu, is_cpu_f32, needs_grad, Linear};
use crate::kernels::linear::{Epilogue, FrozenMlp};
use crate::model::own_backward::{self, Activation};
use candle_core::{Result, Tensor};

#[derive(Debug, Clone)]
pub struct FeedForward {
    pub fc1: Linear,
    pub fc2: Linear,
    pub act: Activation,
}

impl FeedForward {
    /// fc2(act(fc1(h))).
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.frozen_pair(h)? {
            return Ok(y);
        }
        let z = self.fc1.forward(h)?;
        let a = match self.act {
            Activation::Gelu => gelu(&z)?,
            Activation::Relu => z.relu()?,
        };
        self.fc2.forward(&a)
    }

    /// x + fc2(act(fc1(h))): on the CPU with a GELU, the residual rides in the second
    /// layer's pass (or, for a frozen MLP whose input needs a gradient, the whole MLP is one
    /// op).
    pub fn residual(&self, x: &Tensor, h: &Tensor) -> Result<Tensor> {
        if self.act != Activation::Gelu {
            return self.forward(h)? + x;
        }
        if let Some(op) = self.frozen_cpu_op(h)? {
            return h.contiguous()?.apply_op1(op)? + x;
        }
        if let Some(y) = self.frozen_pair(h)? {
            return y + x;
        }
        let hidden = self.fc1.forward_act(h, None, Epilogue::Gelu)?;
        self.fc2.forward_act(&hidden, Some(x), Epilogue::None)
    }

    /// `own_backward::mlp` where it applies: off the CPU's f32 kernels, on an input that
    /// needs a gradient, through two frozen layers.
    fn frozen_pair(&self, h: &Tensor) -> Result<Option<Tensor>> {
        let (fc1, fc2) = (&self.fc1, &self.fc2);
        if is_cpu_f32(h) || !needs_grad(&[h]) || fc1.trains() || fc2.trains() {
            return Ok(None);
        }
        let (l1, l2) = (
            (&fc1.weight, fc1.bias.as_ref()),
            (&fc2.weight, fc2.bias.as_ref()),
        );
        own_backward::mlp(h, l1, l2, self.act).map(Some)
    }

    /// The CPU's one-op GELU MLP, for an input that needs a gradient through frozen layers
    /// with biases.
    fn frozen_cpu_op(&self, h: &Tensor) -> Result<Option<FrozenMlp>> {
        let (fc1, fc2) = (&self.fc1, &self.fc2);
        let (Some(b1), Some(b2)) = (&fc1.bias, &fc2.bias) else {
            return Ok(None);
        };
        let params = [&fc1.weight, b1, &fc2.weight, b2];
        if !is_cpu_f32(h) || !needs_grad(&[h]) || needs_grad(&params) {
            return Ok(None);
        }
        Ok(Some(FrozenMlp {
            fc1: (fc1.weight.contiguous()?, b1.contiguous()?),
            fc2: (fc2.weight.contiguous()?, b2.contiguous()?),
        }))
    }
}
