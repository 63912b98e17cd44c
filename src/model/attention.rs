//! Multi-head self-attention of the image encoder with decomposed relative-position bias,
//! and the window partition around it.

use super::adapter::Lora;
use super::nn::{is_cpu_f32, needs_grad, softmax, Linear};
use super::options::AttentionKernel;
use super::rel_pos_columns::rel_terms;
use crate::kernels::attention::{cpu_backward, flash, tensor_cores};
use crate::kernels::backward_op::with_backward;
use crate::kernels::windows as window_ops;
use crate::params::{Params, Resize};
use crate::resize;
use candle_core::{DType, Result, Tensor};

/// Logit tensors above this many bytes are computed a few heads at a time, which bounds the
/// memory of global attention at 1024 px (12 heads x 4096² logits would be 805 MB).
const LOGITS_BUDGET_BYTES: usize = 96 << 20;

/// `LOGITS_BUDGET_BYTES`, or `MSA_LOGITS_BUDGET_MB` when set (for measuring the chunking's
/// cost on large GPUs).
fn logits_budget() -> usize {
    std::env::var("MSA_LOGITS_BUDGET_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(LOGITS_BUDGET_BYTES, |mb| mb << 20)
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
    pub scale: f64,
    pub rel_pos: Option<(Tensor, Tensor)>,
    /// Low-rank update of `qkv` (the LoRA variant).
    pub lora: Option<Lora>,
    /// Bytes of logits the composed path computes at once (a few heads at a time above it).
    pub logits_budget: usize,
    /// Runs on `kernels::attention::flash` (`AttentionKernel::Flash`).
    pub flash: bool,
    /// Runs on `kernels::attention::tensor_cores` where it can
    /// (`AttentionKernel::TensorCores`).
    pub tensor_cores: bool,
}

impl Attention {
    /// `size` is the side of the attention grid the tables were made for.
    pub fn load(
        p: &Params,
        dim: usize,
        num_heads: usize,
        (rel, size): (bool, usize),
        kernel: AttentionKernel,
    ) -> Result<Self> {
        let head_dim = dim / num_heads;
        let rel_pos = if rel {
            let shape = [2 * size - 1, head_dim];
            Some((
                p.get_resized("rel_pos_h", &shape, Resize::RelPos)?,
                p.get_resized("rel_pos_w", &shape, Resize::RelPos)?,
            ))
        } else {
            None
        };
        Ok(Self {
            qkv: Linear::load(&p.pp("qkv"), dim, 3 * dim, true)?,
            proj: Linear::load(&p.pp("proj"), dim, dim, true)?,
            num_heads,
            scale: (head_dim as f64).powf(-0.5),
            rel_pos,
            lora: None,
            logits_budget: logits_budget(),
            flash: kernel == AttentionKernel::Flash,
            tensor_cores: kernel == AttentionKernel::TensorCores,
        })
    }

    pub fn qkv_forward(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        match &self.lora {
            Some(l) => qkv + l.forward(x)?,
            None => Ok(qkv),
        }
    }

    /// The qkv of an all-zero token (the window padding): the qkv bias, as LoRA maps zero to
    /// zero. A trainable bias gets the padding's gradient through the fill.
    pub fn padding_qkv(&self) -> Result<Tensor> {
        match &self.qkv.bias {
            Some(b) => Ok(b.clone()),
            None => Tensor::zeros(
                self.qkv.out_dim(),
                self.qkv.weight.dtype(),
                self.qkv.weight.device(),
            ),
        }
    }

    /// x: (B, H, W, C) -> (B, H, W, C).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.core(&self.qkv_forward(x)?)?)
    }

    /// softmax(q kᵀ scale + bias) v for every head, before `proj`: (B, H, W, 3C) -> (B, H, W, C).
    pub fn core(&self, qkv: &Tensor) -> Result<Tensor> {
        // The flash kernels run on any device when asked for (on the CPU, to check them).
        // Otherwise the CPU's attention op serves inference and training alike (its
        // backward gives the qkv gradient, and the tables' when they train), and GPUs take
        // candle's ops.
        if self.flash {
            return self.core_flash(qkv);
        }
        if self.takes_tensor_cores(qkv) {
            return self.core_tensor_cores(qkv);
        }
        if is_cpu_f32(qkv) {
            return self.core_cpu(qkv);
        }
        if needs_grad(&[qkv]) && self.tables_frozen() {
            return self.core_recomputed(qkv);
        }
        self.core_ops(qkv)
    }

    /// The rel-pos tables gathered for every (query, key) pair of an (h, w) grid:
    /// Rh (h, h, hd) and Rw (w, w, hd).
    fn gathered_tables(&self, (h, w): (usize, usize)) -> Result<Option<(Tensor, Tensor)>> {
        match &self.rel_pos {
            Some((th, tw)) => Ok(Some((get_rel_pos(h, h, th)?, get_rel_pos(w, w, tw)?))),
            None => Ok(None),
        }
    }

    fn tables_frozen(&self) -> bool {
        match &self.rel_pos {
            Some((h, w)) => !needs_grad(&[h, w]),
            None => true,
        }
    }

    fn core_cpu(&self, qkv: &Tensor) -> Result<Tensor> {
        let (_, h, w, c3) = qkv.dims4()?;
        let (grid, heads, scale) = ((h, w), self.num_heads, self.scale as f32);
        let head_dim = c3 / 3 / heads;
        let qkv = qkv.contiguous()?;
        match self.gathered_tables((h, w))? {
            Some((rh, rw)) if !self.tables_frozen() => qkv.apply_op3(
                &rh.contiguous()?,
                &rw.contiguous()?,
                cpu_backward::CpuAttentionTables {
                    grid,
                    heads,
                    head_dim,
                    scale,
                },
            ),
            tables => {
                let rel = match tables {
                    Some((rh, rw)) => Some((
                        rh.flatten_all()?.to_vec1::<f32>()?,
                        rw.flatten_all()?.to_vec1::<f32>()?,
                    )),
                    None => None,
                };
                qkv.apply_op1(cpu_backward::CpuAttention {
                    grid,
                    heads,
                    head_dim,
                    scale,
                    rel,
                })
            }
        }
    }

    /// The same maths with candle ops (differentiable, any device).
    pub fn core_ops(&self, qkv: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = qkv.dims4()?;
        let heads = self.split_heads(qkv)?;
        let mut outs = self
            .head_chunks(&heads)
            .into_iter()
            .map(|(start, n)| self.attend_chunk(&heads, start, n))
            .collect::<Result<Vec<_>>>()?;
        let out = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 0)?
        };
        merge_heads(&out, (b, h, w))
    }

    /// Whether `kernels::attention::tensor_cores` takes this attention: `tensor_cores`, and what
    /// `tensor_cores::supports` (on GPUs bf16 or f16). The CPU's f32 path keeps its own
    /// kernel; its other dtypes take the op's reference loops, which the tests check.
    fn takes_tensor_cores(&self, qkv: &Tensor) -> bool {
        let head_dim = qkv.dim(3).unwrap_or(0) / 3 / self.num_heads.max(1);
        self.tensor_cores && !is_cpu_f32(qkv) && tensor_cores::supports(qkv, head_dim)
    }

    /// `kernels::attention::tensor_cores`: the tensor-core kernels, with the rel-pos bias as each query's
    /// row and column terms. When qkv alone needs a gradient, the whole of it is one op with
    /// the backward pass below; candle's autograd would otherwise walk about
    /// 40 view, copy and product nodes per block, each costing it a zero fill and an add.
    fn core_tensor_cores(&self, qkv: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = qkv.dims4()?;
        let graph = !needs_grad(&[qkv]) || !self.tables_frozen();
        let heads = self.split_heads(&if graph { qkv.clone() } else { qkv.detach() })?;
        let rel = match &heads.rel {
            Some((rh, rw)) => Some(rel_terms(&heads.q, rh, rw, (h, w))?),
            None => None,
        };
        let (q, k, v) = (&heads.q, &heads.k, &heads.v);
        if graph {
            let out = tensor_cores::attention(q, k, v, rel.as_ref(), (h, w), self.scale)?;
            return merge_heads(&out, (b, h, w));
        }
        let (out, saved) = tensor_cores::forward(q, k, v, rel.as_ref(), (h, w), self.scale)?;
        let y = merge_heads(&out, (b, h, w))?;
        let (tables, heads_n) = (heads.rel, self.num_heads);
        with_backward(qkv, y, "msa-tensor-core-attention", move |_, y, dy| {
            let (out, dout) = (split_rows(y, heads_n)?, split_rows(dy, heads_n)?);
            let mut grads = tensor_cores::gradients(&saved, &out, &dout)?;
            if let (Some((rh, rw)), Some(drel)) = (&tables, grads.get(3)) {
                grads[0] = (&grads[0] + rel_terms_grad(drel, rh, rw, (h, w))?)?;
            }
            merge_qkv_grads(&grads[0], &grads[1], &grads[2], (b, h, w))
        })
    }

    /// `kernels::attention::flash`, in f32, with the rel-pos bias
    /// as extra q/k columns.
    fn core_flash(&self, qkv: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = qkv.dims4()?;
        let heads = self.split_heads(qkv)?;
        let dtype = heads.q.dtype();
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let (q, k) = (f32(&heads.q)?, f32(&heads.k)?);
        let (q, k) = match &heads.rel {
            Some((rh, rw)) => super::rel_pos_columns::bias_as_columns(
                &q,
                &k,
                &f32(rh)?,
                &f32(rw)?,
                (h, w),
                self.scale,
            )?,
            None => ((q * self.scale)?, k),
        };
        let out = q.contiguous()?.apply_op3(
            &k.contiguous()?,
            &f32(&heads.v)?.contiguous()?,
            flash::FlashAttention,
        )?;
        merge_heads(&out.to_dtype(dtype)?, (b, h, w))
    }

    /// q, k and v as (B * heads, H*W, hd), with the gathered rel-pos tables.
    fn split_heads(&self, qkv: &Tensor) -> Result<Heads> {
        let (b, h, w, c3) = qkv.dims4()?;
        let (nh, hd) = (self.num_heads, c3 / 3 / self.num_heads);
        let parts = qkv
            .reshape((b, h * w, 3, nh, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let take = |i: usize| -> Result<Tensor> {
            parts.get(i)?.contiguous()?.reshape((b * nh, h * w, hd))
        };
        Ok(Heads {
            q: take(0)?,
            k: take(1)?,
            v: take(2)?,
            rel: self.gathered_tables((h, w))?,
            grid: (h, w),
        })
    }

    /// (start, count) ranges of the B * heads rows whose logits fit the budget together.
    fn head_chunks(&self, heads: &Heads) -> Vec<(usize, usize)> {
        let rows = heads.q.dim(0).unwrap_or(0);
        let tokens = heads.grid.0 * heads.grid.1;
        let per_head = tokens * tokens * DType::F32.size_in_bytes();
        let chunk = (self.logits_budget / per_head.max(1)).clamp(1, rows.max(1));
        (0..rows)
            .step_by(chunk)
            .map(|start| (start, chunk.min(rows - start)))
            .collect()
    }

    fn attend_chunk(&self, heads: &Heads, start: usize, n: usize) -> Result<Tensor> {
        self.attend(
            &heads.q.narrow(0, start, n)?,
            &heads.k.narrow(0, start, n)?,
            &heads.v.narrow(0, start, n)?,
            heads.rel.as_ref(),
            heads.grid,
        )
    }

    /// For autograd without the CPU's attention op (GPUs): the forward pass runs detached, so no
    /// logits, bias or probabilities are kept; the backward pass rebuilds the graph one
    /// chunk of heads at a time. At 1024 px that is 12 x 4096² floats (805 MB) per global
    /// block and tensor not held until the end of the step, for one more attention forward.
    fn core_recomputed(&self, qkv: &Tensor) -> Result<Tensor> {
        let out = self.core_ops(&qkv.detach())?;
        let attn = self.clone();
        with_backward(qkv, out, "msa-recomputed-attention", move |x, _, dy| {
            attn.recomputed_grad(x, dy)
        })
    }

    /// dqkv = Σ over head chunks of ∂/∂qkv <chunk output, chunk of dy>, each chunk's graph
    /// built and dropped in turn.
    fn recomputed_grad(&self, qkv: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let x = candle_core::Var::from_tensor(qkv)?;
        let heads = self.split_heads(x.as_tensor())?;
        let g = split_rows(dy, self.num_heads)?;
        let mut total = x.zeros_like()?;
        for (start, n) in self.head_chunks(&heads) {
            let out = self.attend_chunk(&heads, start, n)?;
            let grads = (out * g.narrow(0, start, n)?)?.sum_all()?.backward()?;
            if let Some(d) = grads.get(x.as_tensor()) {
                total = (total + d)?;
            }
        }
        Ok(total)
    }

    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rel: Option<&(Tensor, Tensor)>,
        (h, w): (usize, usize),
    ) -> Result<Tensor> {
        let attn = (q * self.scale)?.matmul(&k.t()?)?;
        let probs = match rel {
            Some((rh, rw)) => {
                let (rel_h, rel_w) = rel_pos_terms(q, rh, rw, (h, w))?;
                let bias = rel_h.unsqueeze(4)?.broadcast_add(&rel_w.unsqueeze(3)?)?;
                let n = attn.dim(0)?;
                let attn = attn
                    .reshape((n, h, w, h, w))?
                    .add(&bias)?
                    .reshape((n, h * w, h * w))?;
                softmax(&attn)?
            }
            None => softmax(&attn)?,
        };
        probs.matmul(v)
    }
}

/// q, k, v of every (item, head) as (B * heads, H*W, hd), and what `attend` needs besides.
struct Heads {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Option<(Tensor, Tensor)>,
    grid: (usize, usize),
}

/// (B * heads, H*W, hd) -> (B, H, W, heads * hd).
fn merge_heads(out: &Tensor, (b, h, w): (usize, usize, usize)) -> Result<Tensor> {
    let (bn, _, hd) = out.dims3()?;
    let nh = bn / b.max(1);
    out.reshape((b, nh, h, w, hd))?
        .permute((0, 2, 3, 1, 4))?
        .contiguous()?
        .reshape((b, h, w, nh * hd))
}

/// The gradient of qkv (B, H, W, 3C) from those of q, k and v (B * heads, H*W, hd): the
/// inverse of `Attention::split_heads`.
fn merge_qkv_grads(
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
    (b, h, w): (usize, usize, usize),
) -> Result<Tensor> {
    let (bn, n, hd) = dq.dims3()?;
    let nh = bn / b.max(1);
    Tensor::stack(&[dq, dk, dv], 0)?
        .reshape((3, b, nh, n, hd))?
        .permute((1, 3, 0, 2, 4))?
        .contiguous()?
        .reshape((b, h, w, 3 * nh * hd))
}

/// The gradient that the bias terms' gradient drel (BH, N, h + w) gives q (BH, N, hd), for
/// terms made by `rel_terms` from the gathered tables rh (h, h, hd) and rw (w, w, hd).
fn rel_terms_grad(
    drel: &Tensor,
    rh: &Tensor,
    rw: &Tensor,
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let (bh, n, _) = drel.dims3()?;
    let hd = rh.dim(2)?;
    // dq[b, qy, qx] += Σ_ky drel_h[b, qy, qx, ky] rh[qy, ky]: one product per query row.
    let by_row = drel
        .narrow(2, 0, h)?
        .reshape((bh, h, w, h))?
        .permute((1, 0, 2, 3))?
        .contiguous()?
        .reshape((h, bh * w, h))?
        .matmul(&rh.contiguous()?)?
        .reshape((h, bh, w, hd))?
        .permute((1, 0, 2, 3))?;
    // dq[b, qy, qx] += Σ_kx drel_w[b, qy, qx, kx] rw[qx, kx]: one per query column.
    let by_col = drel
        .narrow(2, h, w)?
        .reshape((bh, h, w, w))?
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((w, bh * h, w))?
        .matmul(&rw.contiguous()?)?
        .reshape((w, bh, h, hd))?
        .permute((1, 2, 0, 3))?;
    (by_row + by_col)?.reshape((bh, n, hd))
}

/// (B, H, W, heads * hd) -> (B * heads, H*W, hd), the inverse of `merge_heads`.
fn split_rows(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    x.reshape((b, h * w, heads, c / heads))?
        .permute((0, 2, 1, 3))?
        .contiguous()?
        .reshape((b * heads, h * w, c / heads))
}

/// Rows of a relative-position table for every (query, key) pair: (q_size, k_size, C).
pub fn get_rel_pos(q_size: usize, k_size: usize, table: &Tensor) -> Result<Tensor> {
    let max_dist = 2 * q_size.max(k_size) - 1;
    let table = resize::rel_pos_table(table, max_dist)?;
    let q_scale = (k_size as f64 / q_size as f64).max(1.0);
    let k_scale = (q_size as f64 / k_size as f64).max(1.0);
    let mut idx = Vec::with_capacity(q_size * k_size);
    for qi in 0..q_size {
        for ki in 0..k_size {
            let rel = qi as f64 * q_scale - ki as f64 * k_scale + (k_size as f64 - 1.0) * k_scale;
            idx.push(rel as u32);
        }
    }
    let idx = Tensor::from_vec(idx, q_size * k_size, table.device())?;
    let c = table.dim(1)?;
    table.index_select(&idx, 0)?.reshape((q_size, k_size, c))
}

/// The decomposed relative-position terms <q, Rh[qh-kh]> (n, h, w, h) and <q, Rw[qw-kw]>
/// (n, h, w, w), with q unscaled (n, h*w, C).
fn rel_pos_terms(
    q: &Tensor,
    rh: &Tensor,
    rw: &Tensor,
    (h, w): (usize, usize),
) -> Result<(Tensor, Tensor)> {
    let (n, _, c) = q.dims3()?;
    let r_q = q.reshape((n, h, w, c))?;
    // rel_h[n, y, x, ky] = sum_c r_q[n, y, x, c] * rh[y, ky, c]: a matmul batched over y.
    let rel_h = r_q
        .permute((1, 0, 2, 3))?
        .contiguous()?
        .reshape((h, n * w, c))?
        .matmul(&rh.t()?)?
        .reshape((h, n, w, h))?
        .permute((1, 0, 2, 3))?;
    let rel_w = r_q
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((w, n * h, c))?
        .matmul(&rw.t()?)?
        .reshape((w, n, h, w))?
        .permute((1, 2, 0, 3))?;
    Ok((rel_h, rel_w))
}

/// (B, H, W, C) -> (B * windows, ws, ws, C), zero-padding bottom/right to a multiple of ws.
pub fn window_partition(x: &Tensor, ws: usize) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = x.dims4()?;
    let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    if is_cpu_f32(x) {
        let op = window_ops::WindowPartition(window_ops::Windows { hw: (h, w), ws });
        return Ok((x.contiguous()?.apply_op1(op)?, (h + ph, w + pw)));
    }
    if needs_grad(&[x]) {
        let (y, padded) = window_partition(&x.detach(), ws)?;
        let y = with_backward(x, y, "msa-window-partition", move |_, _, dy| {
            window_unpartition(dy, ws, padded, (h, w))
        })?;
        return Ok((y, padded));
    }
    let x = if ph > 0 || pw > 0 {
        x.pad_with_zeros(1, 0, ph)?.pad_with_zeros(2, 0, pw)?
    } else {
        x.clone()
    };
    let (hp, wp) = (h + ph, w + pw);
    let windows = x
        .reshape((b, hp / ws, ws, wp / ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b * (hp / ws) * (wp / ws), ws, ws, c))?;
    Ok((windows, (hp, wp)))
}

/// `window_partition` with `fill` (C values) in the padding instead of zeros.
pub fn window_partition_filled(
    x: &Tensor,
    ws: usize,
    fill: &Tensor,
) -> Result<(Tensor, (usize, usize))> {
    let (_, h, w, _) = x.dims4()?;
    let padded = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
    if is_cpu_f32(x) && fill.is_contiguous() {
        let op = window_ops::FilledWindowPartition(window_ops::Windows { hw: (h, w), ws });
        return Ok((x.contiguous()?.apply_op2(fill, op)?, padded));
    }
    if needs_grad(&[x]) && !needs_grad(&[fill]) {
        let (y, _) = window_partition_filled(&x.detach(), ws, fill)?;
        let y = with_backward(x, y, "msa-window-partition", move |_, _, dy| {
            window_unpartition(dy, ws, padded, (h, w))
        })?;
        return Ok((y, padded));
    }
    let (windows, padded) = window_partition(x, ws)?;
    if padded == (h, w) {
        return Ok((windows, padded));
    }
    // 1 on padding tokens, 0 on image tokens, so that image values are left bit-exact.
    let ones = Tensor::ones((1, h, w, 1), x.dtype(), x.device())?;
    let (mask, _) = window_partition(&ones, ws)?;
    let mask = (1.0 - mask)?;
    let b = x.dim(0)?;
    let mask = mask.repeat((b, 1, 1, 1))?;
    Ok(((windows + mask.broadcast_mul(fill)?)?, padded))
}

/// Inverse of `window_partition`, cropping the padding away.
pub fn window_unpartition(
    windows: &Tensor,
    ws: usize,
    (hp, wp): (usize, usize),
    (h, w): (usize, usize),
) -> Result<Tensor> {
    if is_cpu_f32(windows) {
        let op = window_ops::WindowUnpartition(window_ops::Windows { hw: (h, w), ws });
        return windows.contiguous()?.apply_op1(op);
    }
    if needs_grad(&[windows]) {
        let y = window_unpartition(&windows.detach(), ws, (hp, wp), (h, w))?;
        return with_backward(windows, y, "msa-window-unpartition", move |_, _, dy| {
            Ok(window_partition(dy, ws)?.0)
        });
    }
    let c = windows.dim(3)?;
    let b = windows.dim(0)? / ((hp / ws) * (wp / ws));
    let x = windows
        .reshape((b, hp / ws, wp / ws, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b, hp, wp, c))?;
    if hp > h || wp > w {
        x.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous()
    } else {
        Ok(x)
    }
}
