//! Attention layers that choose their kernel: multi-head attention over projected
//! queries, keys and values (SAM's mask decoder), and attention with an additive bias per
//! head over qkv laid out per head (TinyViT). On the CPU in f32 our kernels serve
//! inference and training; elsewhere one op with its own backward pass, or the composed
//! form recomputed in the backward pass, keeps the step's memory down; `flash` takes
//! `kernels::attention::flash` on any device.

use super::{is_cpu_f32, needs_grad, softmax};
use crate::kernels::attention::{cpu as attention_cpu, cpu_backward, flash};
use crate::kernels::backward_op::{recomputed, with_backward3};
use crate::kernels::with_slice;
use candle_core::{DType, Result, Tensor, D};

/// softmax(q kᵀ / √hd) v over `heads` heads: q (B, Nq, C), k and v (B, Nk, C), each row
/// the heads side by side.
#[derive(Debug, Clone, Copy)]
pub struct MultiHeadAttention {
    pub num_heads: usize,
    /// Runs on `kernels::attention::flash`.
    pub flash: bool,
}

impl MultiHeadAttention {
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        if self.flash {
            self.attend_flash(q, k, v)
        } else if is_cpu_f32(q) && !needs_grad(&[q, k, v]) {
            self.attend_cpu(q, k, v)
        } else {
            self.attend_ops(q, k, v)
        }
    }

    /// (B, N, heads * c) -> (B, heads, N, c).
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        x.reshape((b, n, self.num_heads, c / self.num_heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn scale(&self, c: usize) -> f64 {
        ((c / self.num_heads) as f64).powf(-0.5)
    }

    /// The CPU kernel reads heads in place (no head transposes, no logits tensor).
    fn attend_cpu(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, nq, c) = q.dims3()?;
        let nk = k.dim(1)?;
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        fn op(data: &[f32], n: usize, c: usize, heads: usize) -> attention_cpu::Operand<'_> {
            attention_cpu::Operand {
                data,
                row_stride: c,
                batch_stride: n * c,
                head_stride: c / heads,
            }
        }
        let hd = c / self.num_heads;
        let dims = attention_cpu::Dims {
            b,
            nq,
            nk,
            heads: self.num_heads,
            head_dim: hd,
            grid: (1, nk),
        };
        let out = with_slice(&q, |qs| {
            with_slice(&k, |ks| {
                with_slice(&v, |vs| {
                    Ok(attention_cpu::attention_general(
                        op(qs, nq, c, self.num_heads),
                        op(ks, nk, c, self.num_heads),
                        op(vs, nk, c, self.num_heads),
                        dims,
                        (hd as f32).powf(-0.5),
                        attention_cpu::Bias::None,
                    ))
                })
            })
        })?;
        Tensor::from_vec(out, (b, nq, c), q.device())
    }

    /// `kernels::attention::flash`, in f32.
    fn attend_flash(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, nq, c) = q.dims3()?;
        let rows = |x: &Tensor| -> Result<Tensor> {
            let (_, n, _) = x.dims3()?;
            self.heads(&x.to_dtype(DType::F32)?)?.reshape((
                b * self.num_heads,
                n,
                c / self.num_heads,
            ))
        };
        let out = (rows(q)? * self.scale(c))?.contiguous()?.apply_op3(
            &rows(k)?,
            &rows(v)?,
            flash::FlashAttention,
        )?;
        out.reshape((b, self.num_heads, nq, c / self.num_heads))?
            .transpose(1, 2)?
            .reshape((b, nq, c))?
            .to_dtype(q.dtype())
    }

    /// softmax(q kᵀ / √c) v over heads, in candle's ops. With a gradient to compute it is one
    /// op with the backward pass below: candle's autograd would otherwise walk the head
    /// split, the products and the merge, 18 nodes, spending a zero fill and an add on each.
    fn attend_ops(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        if !needs_grad(&[q, k, v]) {
            return self.attend_heads(q, k, v);
        }
        let y = self.attend_heads(&q.detach(), &k.detach(), &v.detach())?;
        let attn = *self;
        with_backward3(
            (q, k, v),
            y,
            "msa-decoder-attention",
            move |[q, k, v], dy| attn.attend_grad([q, k, v], dy),
        )
    }

    fn attend_heads(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (q, k, v) = (self.heads(q)?, self.heads(k)?, self.heads(v)?);
        let c = q.dim(3)?;
        let attn = (q.matmul(&k.t()?)? / (c as f64).sqrt())?;
        self.merge(&softmax(&attn)?.matmul(&v)?)
    }

    /// (B, heads, N, c) -> (B, N, heads * c), the inverse of `heads`.
    fn merge(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, n, c) = x.dims4()?;
        x.transpose(1, 2)?.contiguous()?.reshape((b, n, h * c))
    }

    /// The gradients of q, k and v (those that need one) given dy: with P the
    /// probabilities and dP = dO vᵀ, dS = P (dP - Σ dP P), dq = dS k / √c, dk = dSᵀ q / √c
    /// and dv = Pᵀ dO.
    fn attend_grad(
        &self,
        [(q, dq_on), (k, dk_on), (v, dv_on)]: [(&Tensor, bool); 3],
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let (qh, kh, vh, d_out) = (
            self.heads(q)?,
            self.heads(k)?,
            self.heads(v)?,
            self.heads(dy)?,
        );
        let scale = (qh.dim(3)? as f64).powf(-0.5);
        let p = softmax(&(qh.matmul(&kh.t()?)? * scale)?)?;
        let dv = dv_on
            .then(|| self.merge(&p.t()?.matmul(&d_out)?))
            .transpose()?;
        if !dq_on && !dk_on {
            return Ok([None, None, dv]);
        }
        let dp = d_out.matmul(&vh.t()?)?;
        let ds = ((&dp - (&dp * &p)?.sum_keepdim(3)?.broadcast_as(dp.shape())?)? * &p)?;
        let ds = (ds * scale)?;
        let dq = dq_on.then(|| self.merge(&ds.matmul(&kh)?)).transpose()?;
        let dk = dk_on
            .then(|| self.merge(&ds.t()?.matmul(&qh)?))
            .transpose()?;
        Ok([dq, dk, dv])
    }
}

/// softmax(scale q kᵀ + bias) v per head over qkv (B, N, 3C) laid out per head as
/// [q, k, v], with a (heads, N, N) bias: (B, N, C), before the output projection.
#[derive(Debug, Clone, Copy)]
pub struct BiasedAttention {
    pub num_heads: usize,
}

impl BiasedAttention {
    pub fn forward(&self, qkv: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let c3 = qkv.dim(2)?;
        let (heads, d) = (self.num_heads, c3 / 3 / self.num_heads);
        if is_cpu_f32(qkv) {
            let op = cpu_backward::TableAttention {
                heads,
                head_dim: d,
                scale: (d as f64).powf(-0.5) as f32,
            };
            return qkv.contiguous()?.apply_op2(&bias.contiguous()?, op);
        }
        // The composed form keeps several (heads, N, N) maps per window for the backward
        // pass; recomputed, it keeps qkv alone.
        if needs_grad(&[qkv]) && !needs_grad(&[bias]) {
            let (attn, bias) = (*self, bias.clone());
            return recomputed(qkv, "msa-recomputed-biased-attention", move |qkv| {
                attn.attend_ops(qkv, &bias)
            });
        }
        self.attend_ops(qkv, bias)
    }

    /// `forward` in candle's ops.
    fn attend_ops(&self, qkv: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, n, c3) = qkv.dims3()?;
        let (heads, d) = (self.num_heads, c3 / 3 / self.num_heads);
        let scale = (d as f64).powf(-0.5);
        let qkv = qkv.reshape((b, n, heads, 3 * d))?;
        let part = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * d, d)?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let logits = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias.unsqueeze(0)?)?;
        let o = softmax(&logits)?.matmul(&v)?;
        o.transpose(1, 2)?.contiguous()?.reshape((b, n, c3 / 3))
    }
}
