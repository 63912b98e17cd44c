//! Convolutions on channels-last maps (B, H, W, C), each choosing its backend: the CPU
//! kernels when nothing needs a gradient on the CPU, one op with its own backward pass for
//! a frozen kernel, candle's ops otherwise.

use super::{is_cpu_f32, needs_grad, to_channels_first, to_channels_last, Derived};
use crate::kernels::backward_op::{recomputed, with_backward};
use crate::kernels::depthwise::{self, depthwise_conv_ops, depthwise_forward, DepthwiseGeometry};
use crate::kernels::linear::Epilogue;
use crate::kernels::with_slice;
use crate::params::Params;
use candle_core::{Result, Tensor};

/// A 3x3 convolution with padding 1 and no bias, on channels-last maps (B, H, W, C) ->
/// (B, H, W, O): the CPU kernel when nothing needs a gradient, the input gradient alone
/// (a transposed conv with the same kernel) when the weight is frozen, candle's conv
/// otherwise.
#[derive(Debug, Clone)]
pub struct Conv3x3 {
    pub conv: candle_nn::Conv2d,
    /// The weight as (9, O, C) taps for the CPU kernel.
    pub taps: Derived,
}

impl Conv3x3 {
    pub fn load(p: &Params, cin: usize, cout: usize) -> Result<Self> {
        let w = p.get("weight", &[cout, cin, 3, 3])?;
        let taps = Derived::new(vec![w.clone()], |t| {
            let [w] = t else {
                candle_core::bail!("a 3x3 conv's taps come from one weight");
            };
            let (o, c, _, _) = w.dims4()?;
            w.permute((2, 3, 0, 1))?.contiguous()?.reshape((9, o, c))
        })?;
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv: candle_nn::Conv2d::new(w, None, cfg),
            taps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        use candle_core::Module;
        let taps = self.taps.get()?;
        if needs_grad(&[x]) && !needs_grad(&[self.conv.weight()]) {
            let xc = to_channels_first(x)?.contiguous()?;
            let y = self.conv.forward(&xc.detach())?;
            let w = self.conv.weight().clone();
            let y = with_backward(&xc, y, "msa-frozen-conv3x3", move |_, _, dy| {
                dy.conv_transpose2d(&w, 1, 0, 1, 1)
            })?;
            return to_channels_last(&y)?.contiguous();
        }
        if !is_cpu_f32(x) || needs_grad(&[x, &taps]) {
            let y = self.conv.forward(&to_channels_first(x)?.contiguous()?)?;
            return to_channels_last(&y)?.contiguous();
        }
        let (b, h, w, c) = x.dims4()?;
        let o = taps.dim(1)?;
        let y = with_slice(&x.contiguous()?, |xs| {
            with_slice(&taps, |t| {
                Ok(crate::kernels::conv3x3::conv3x3(xs, (b, h, w, c), t, None))
            })
        })?;
        Tensor::from_vec(y, (b, h, w, o), x.device())
    }
}

/// A depthwise k x k convolution (groups = channels) with bias, (B, H, W, C) ->
/// (B, Ho, Wo, C); `taps` are tap-major (k * k, C).
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    pub taps: Tensor,
    pub bias: Tensor,
    pub geometry: DepthwiseGeometry,
}

impl DepthwiseConv {
    /// The convolution followed by `act`; one pass over the output when nothing needs a
    /// gradient.
    pub fn forward_act(&self, x: &Tensor, act: Epilogue) -> Result<Tensor> {
        let (taps, bias) = (&self.taps, &self.bias);
        if is_cpu_f32(x) && !needs_grad(&[x, taps, bias]) {
            let gelu = act == Epilogue::Gelu;
            return depthwise_forward(&x.contiguous()?, taps, bias, self.geometry, gelu);
        }
        let y = self.forward_graph(x)?;
        match act {
            Epilogue::Gelu => super::gelu(&y),
            Epilogue::None => Ok(y),
        }
    }

    /// The convolution where a gradient is needed.
    fn forward_graph(&self, x: &Tensor) -> Result<Tensor> {
        let (taps, bias, g) = (&self.taps, &self.bias, self.geometry);
        if is_cpu_f32(x) {
            return x
                .contiguous()?
                .apply_op3(taps, bias, depthwise::DepthwiseConv(g));
        }
        // The composed form keeps about 27 maps of the output's size for the backward pass
        // (BENCHMARKS.md, LiteMedSAM on the GPU). With stride 1 the input's gradient is the
        // same convolution of dy with the taps reversed, so the step keeps the input alone
        // and autograd walks one node; otherwise the composed form is recomputed.
        let frozen = needs_grad(&[x]) && !needs_grad(&[taps, bias]);
        if frozen && g.stride == 1 {
            let taps = taps.clone();
            let y = depthwise_conv_ops(&x.detach(), &taps, bias, g)?;
            return with_backward(x, y, "msa-frozen-depthwise", move |_, _, dy| {
                let reversed = taps.flip(&[0])?;
                let zero = reversed.get(0)?.zeros_like()?;
                depthwise_conv_ops(
                    dy,
                    &reversed.to_dtype(dy.dtype())?,
                    &zero.to_dtype(dy.dtype())?,
                    g,
                )
            });
        }
        if frozen {
            let (taps, bias) = (taps.clone(), bias.clone());
            return recomputed(x, "msa-recomputed-depthwise", move |x| {
                depthwise_conv_ops(x, &taps, &bias, g)
            });
        }
        depthwise_conv_ops(x, taps, bias, g)
    }
}
