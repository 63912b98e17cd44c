//! The CPU training ops (the CPU attention, window partition, GELU, LayerNorm, Linear) against
//! the same maths written with candle's differentiable primitives: outputs and input
//! gradients. The shapes are chosen to reach the paths the small parity fixtures do not:
//! several query-row blocks per head, non-square grids, padding on both sides.

mod common;

use candle_core::{DType, Device, Tensor, Var, D};
use msa::kernels::attention::cpu_backward::CpuAttention;
use msa::kernels::gelu::Gelu;
use msa::kernels::layer_norm::FrozenLayerNorm;
use msa::kernels::windows::{FilledWindowPartition, WindowPartition, WindowUnpartition, Windows};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    // A small LCG keeps the test independent of candle's RNG.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn assert_close(what: &str, ours: &Tensor, reference: &Tensor, tol: f32) {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
    let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: max |diff| {worst} > {tol} x max |ref| {scale}"
    );
    assert!(b.iter().any(|v| *v != 0.0), "{what}: reference is all zero");
}

/// ∂/∂input of Σ out ⊙ weights: the input gradient for the output gradient `weights`.
fn input_grad(out: &Tensor, weights: &Tensor, input: &Var) -> Tensor {
    let grads = (out * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    grads.get(input.as_tensor()).unwrap().clone()
}

/// The gradients of `vars` for the output gradient `weights` agree between `ours` and
/// `reference`.
fn assert_same_grads<const N: usize>(
    ours: &Tensor,
    reference: &Tensor,
    weights: &Tensor,
    vars: [&Var; N],
    names: [&str; N],
    tol: f32,
) {
    let (g_ours, g_ref) = (
        common::weighted_grads(ours, weights),
        common::weighted_grads(reference, weights),
    );
    for (var, name) in vars.iter().zip(names) {
        let t = var.as_tensor();
        assert_close(name, g_ours.get(t).unwrap(), g_ref.get(t).unwrap(), tol);
    }
}

fn softmax(x: &Tensor) -> Tensor {
    let max = x.max_keepdim(D::Minus1).unwrap().detach();
    let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
    e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
}

/// softmax(scale q kᵀ + <q, Rh[qy, ky]> + <q, Rw[qx, kx]>) v with primitive ops.
fn attention_reference(
    qkv: &Tensor,
    (b, h, w): (usize, usize, usize),
    (heads, hd): (usize, usize),
    scale: f64,
    rh: &Tensor,
    rw: &Tensor,
) -> Tensor {
    let n = h * w;
    let parts = qkv
        .reshape((b, n, 3, heads, hd))
        .unwrap()
        .permute((2, 0, 3, 1, 4))
        .unwrap();
    let take = |i: usize| parts.get(i).unwrap().reshape((b * heads, n, hd)).unwrap();
    let (q, k, v) = (take(0), take(1), take(2));
    let logits = (&q * scale).unwrap().matmul(&k.t().unwrap()).unwrap();
    let r_q = q.reshape((b * heads, h, w, 1, hd)).unwrap();
    let rel_h = r_q
        .broadcast_mul(&rh.reshape((1, h, 1, h, hd)).unwrap())
        .unwrap()
        .sum(4)
        .unwrap();
    let rel_w = r_q
        .broadcast_mul(&rw.reshape((1, 1, w, w, hd)).unwrap())
        .unwrap()
        .sum(4)
        .unwrap();
    let biased = logits
        .reshape((b * heads, h, w, h, w))
        .unwrap()
        .broadcast_add(&rel_h.unsqueeze(4).unwrap())
        .unwrap()
        .broadcast_add(&rel_w.unsqueeze(3).unwrap())
        .unwrap()
        .reshape((b * heads, n, n))
        .unwrap();
    softmax(&biased)
        .matmul(&v)
        .unwrap()
        .reshape((b, heads, n, hd))
        .unwrap()
        .permute((0, 2, 1, 3))
        .unwrap()
        .reshape((b, n, heads * hd))
        .unwrap()
}

#[test]
fn cpu_attention_matches_composed_ops_with_several_row_blocks() {
    // 12 x 11 = 132 query rows: blocks of 64, 64 and 4.
    let (b, h, w, heads, hd) = (2, 12, 11, 3, 8);
    let c = heads * hd;
    let scale = (hd as f64).powf(-0.5);
    let qkv = Var::from_tensor(&rand(&[b, h * w, 3 * c], 1)).unwrap();
    let rh = (rand(&[h, h, hd], 2) * 0.5).unwrap();
    let rw = (rand(&[w, w, hd], 3) * 0.5).unwrap();
    let weights = rand(&[b, h * w, c], 4);

    let op = CpuAttention {
        grid: (h, w),
        heads,
        head_dim: hd,
        scale: scale as f32,
        rel: Some((
            rh.flatten_all().unwrap().to_vec1().unwrap(),
            rw.flatten_all().unwrap().to_vec1().unwrap(),
        )),
    };
    let ours = qkv.as_tensor().apply_op1(op).unwrap();
    let reference = attention_reference(qkv.as_tensor(), (b, h, w), (heads, hd), scale, &rh, &rw);
    assert_close("attention output", &ours, &reference, 1e-5);

    let grad_of = |out: &Tensor| input_grad(out, &weights, &qkv);
    assert_close("qkv gradient", &grad_of(&ours), &grad_of(&reference), 1e-4);
}

/// `--train all`: the gathered relative-position tables train too.
#[test]
fn cpu_attention_gives_the_tables_gradients() {
    use msa::kernels::attention::cpu_backward::CpuAttentionTables;
    let (b, h, w, heads, hd) = (2, 12, 11, 3, 8);
    let c = heads * hd;
    let scale = (hd as f64).powf(-0.5);
    let qkv = Var::from_tensor(&rand(&[b, h * w, 3 * c], 41)).unwrap();
    let rh = Var::from_tensor(&(rand(&[h, h, hd], 42) * 0.5).unwrap()).unwrap();
    let rw = Var::from_tensor(&(rand(&[w, w, hd], 43) * 0.5).unwrap()).unwrap();
    let weights = rand(&[b, h * w, c], 44);
    let op = CpuAttentionTables {
        grid: (h, w),
        heads,
        head_dim: hd,
        scale: scale as f32,
    };
    let ours = qkv
        .as_tensor()
        .apply_op3(rh.as_tensor(), rw.as_tensor(), op)
        .unwrap();
    let reference = attention_reference(
        qkv.as_tensor(),
        (b, h, w),
        (heads, hd),
        scale,
        rh.as_tensor(),
        rw.as_tensor(),
    );
    assert_close("attention output", &ours, &reference, 1e-5);
    for (name, input) in [("qkv", &qkv), ("Rh", &rh), ("Rw", &rw)] {
        assert_close(
            &format!("{name} gradient"),
            &input_grad(&ours, &weights, input),
            &input_grad(&reference, &weights, input),
            1e-4,
        );
    }
}

#[test]
fn cpu_attention_without_bias_matches_composed_ops() {
    let (b, h, w, heads, hd) = (1, 5, 4, 2, 4);
    let c = heads * hd;
    let scale = (hd as f64).powf(-0.5);
    let qkv = Var::from_tensor(&rand(&[b, h * w, 3 * c], 5)).unwrap();
    let zeros_h = Tensor::zeros((h, h, hd), DType::F32, &Device::Cpu).unwrap();
    let zeros_w = Tensor::zeros((w, w, hd), DType::F32, &Device::Cpu).unwrap();
    let op = CpuAttention {
        grid: (h, w),
        heads,
        head_dim: hd,
        scale: scale as f32,
        rel: None,
    };
    let ours = qkv.as_tensor().apply_op1(op).unwrap();
    let reference = attention_reference(
        qkv.as_tensor(),
        (b, h, w),
        (heads, hd),
        scale,
        &zeros_h,
        &zeros_w,
    );
    assert_close("attention output", &ours, &reference, 1e-5);
    let weights = rand(&[b, h * w, c], 6);
    let grad_of = |out: &Tensor| input_grad(out, &weights, &qkv);
    assert_close("qkv gradient", &grad_of(&ours), &grad_of(&reference), 1e-4);
}

/// SAM's partition with pad, reshape and permute.
fn partition_reference(x: &Tensor, ws: usize) -> Tensor {
    let (b, h, w, c) = x.dims4().unwrap();
    let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    let x = x
        .pad_with_zeros(1, 0, ph)
        .unwrap()
        .pad_with_zeros(2, 0, pw)
        .unwrap();
    let (hp, wp) = (h + ph, w + pw);
    x.reshape((b, hp / ws, ws, wp / ws, ws, c))
        .unwrap()
        .permute((0, 1, 3, 2, 4, 5))
        .unwrap()
        .reshape((b * (hp / ws) * (wp / ws), ws, ws, c))
        .unwrap()
}

#[test]
fn window_partition_and_unpartition_match_composed_ops() {
    let (b, h, w, c, ws) = (2, 8, 7, 5, 3);
    let geometry = Windows { hw: (h, w), ws };
    let x = Var::from_tensor(&rand(&[b, h, w, c], 7)).unwrap();
    let ours = x.as_tensor().apply_op1(WindowPartition(geometry)).unwrap();
    let reference = partition_reference(x.as_tensor(), ws);
    assert_close("partition", &ours, &reference, 0.0);

    let weights = rand(reference.dims(), 8);
    let grad_of = |out: &Tensor| input_grad(out, &weights, &x);
    assert_close(
        "partition gradient",
        &grad_of(&ours),
        &grad_of(&reference),
        0.0,
    );

    // Unpartition inverts partition and its gradient is the partition of the gradient.
    let windows = Var::from_tensor(&reference).unwrap();
    let back = windows
        .as_tensor()
        .apply_op1(WindowUnpartition(geometry))
        .unwrap();
    assert_close("unpartition", &back, x.as_tensor(), 0.0);
    let g = rand(&[b, h, w, c], 9);
    let dwin = input_grad(&back, &g, &windows);
    assert_close(
        "unpartition gradient",
        &dwin,
        &partition_reference(&g, ws),
        0.0,
    );
}

#[test]
fn gelu_op_matches_candle_gelu_erf() {
    let x = Var::from_tensor(&(rand(&[3, 1000], 10) * 6.0).unwrap()).unwrap();
    let ours = x.as_tensor().apply_op1(Gelu).unwrap();
    let reference = x.as_tensor().gelu_erf().unwrap();
    assert_close("gelu", &ours, &reference, 1e-6);
    let weights = rand(&[3, 1000], 11);
    let grad_of = |out: &Tensor| input_grad(out, &weights, &x);
    assert_close("gelu gradient", &grad_of(&ours), &grad_of(&reference), 1e-5);
}

fn layer_norm_reference(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    xc.broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(weight)
        .unwrap()
        .broadcast_add(bias)
        .unwrap()
}

#[test]
fn frozen_layer_norm_matches_composed_ops() {
    let c = 48;
    let x = Var::from_tensor(&(rand(&[4, 5, c], 12) * 3.0).unwrap()).unwrap();
    let weight = (rand(&[c], 13) + 1.0).unwrap();
    let bias = rand(&[c], 14);
    let eps = 1e-6;
    let op = FrozenLayerNorm {
        weight: weight.to_vec1().unwrap(),
        bias: bias.to_vec1().unwrap(),
        eps,
    };
    let ours = x.as_tensor().apply_op1(op).unwrap();
    let reference = layer_norm_reference(x.as_tensor(), &weight, &bias, eps);
    assert_close("layer norm", &ours, &reference, 1e-5);
    let weights = rand(&[4, 5, c], 15);
    let grad_of = |out: &Tensor| input_grad(out, &weights, &x);
    assert_close(
        "layer norm gradient",
        &grad_of(&ours),
        &grad_of(&reference),
        1e-4,
    );
}

/// 150 rows: the weight and bias gradients are summed over three row blocks.
#[test]
fn trainable_layer_norm_matches_composed_ops() {
    use msa::kernels::layer_norm::TrainableLayerNorm;
    let c = 40;
    let x = Var::from_tensor(&(rand(&[3, 50, c], 20) * 3.0).unwrap()).unwrap();
    let w = Var::from_tensor(&(rand(&[c], 21) + 1.0).unwrap()).unwrap();
    let b = Var::from_tensor(&rand(&[c], 22)).unwrap();
    let eps = 1e-6;
    let ours = x
        .as_tensor()
        .apply_op3(w.as_tensor(), b.as_tensor(), TrainableLayerNorm { eps })
        .unwrap();
    let reference = layer_norm_reference(x.as_tensor(), w.as_tensor(), b.as_tensor(), eps);
    assert_close("layer norm", &ours, &reference, 1e-5);
    let weights = rand(&[3, 50, c], 23);
    let names = ["dx", "dweight", "dbias"];
    assert_same_grads(&ours, &reference, &weights, [&x, &w, &b], names, 1e-4);
}

#[test]
fn trainable_linear_matches_composed_ops() {
    use msa::kernels::linear::TrainableLinear;
    let (din, dout) = (24, 10);
    let x = Var::from_tensor(&rand(&[2, 3, 5, din], 16)).unwrap();
    let w = Var::from_tensor(&rand(&[dout, din], 17)).unwrap();
    let b = Var::from_tensor(&rand(&[dout], 18)).unwrap();
    let ours = x
        .as_tensor()
        .apply_op3(w.as_tensor(), b.as_tensor(), TrainableLinear)
        .unwrap();
    let reference = x
        .as_tensor()
        .reshape((30, din))
        .unwrap()
        .matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(b.as_tensor())
        .unwrap()
        .reshape((2, 3, 5, dout))
        .unwrap();
    assert_close("linear", &ours, &reference, 1e-6);
    let weights = rand(&[2, 3, 5, dout], 19);
    let names = ["dx", "dW", "db"];
    assert_same_grads(&ours, &reference, &weights, [&x, &w, &b], names, 1e-5);
}

/// The CPU op (float32) against the composed mask version (float64 takes it): values, and
/// the gradients of the input and of the fill, which a trainable qkv bias receives.
#[test]
fn filled_window_partition_puts_the_fill_in_the_padding_only() {
    use msa::model::attention::window_partition_filled;
    let (b, h, w, c, ws) = (2, 5, 4, 3, 3);
    let x = Var::from_tensor(&rand(&[b, h, w, c], 20)).unwrap();
    let fill = Var::new(&[7f32, 8.0, 9.0], &Device::Cpu).unwrap();
    let (op, padded) = window_partition_filled(x.as_tensor(), ws, fill.as_tensor()).unwrap();
    assert_eq!(padded, (6, 6));
    let x64 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
    let fill64 = Var::from_tensor(&fill.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
    let (composed, _) = window_partition_filled(x64.as_tensor(), ws, fill64.as_tensor()).unwrap();
    let composed32 = composed.to_dtype(DType::F32).unwrap();
    assert_close("filled partition", &op, &composed32, 0.0);
    let zero_padded = partition_reference(x.as_tensor(), ws);
    let (op_v, zp_v) = (
        op.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        zero_padded.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    // Every token is either the image's (bit-exact) or the fill.
    let mut fills = 0;
    for (t, z) in op_v.chunks(c).zip(zp_v.chunks(c)) {
        if t == [7.0, 8.0, 9.0] {
            fills += 1;
        } else {
            assert_eq!(t, z);
        }
    }
    assert_eq!(fills, b * (36 - h * w));

    let weights = rand(op.dims(), 21);
    let grads = (&op * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let weights64 = weights.to_dtype(DType::F64).unwrap();
    let grads64 = (&composed * &weights64)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, ours, reference) in [
        ("dx", x.as_tensor(), x64.as_tensor()),
        ("dfill", fill.as_tensor(), fill64.as_tensor()),
    ] {
        let reference = grads64
            .get(reference)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_close(name, grads.get(ours).unwrap(), &reference, 1e-6);
    }
}

/// Without the CPU attention op (GPUs; here float64 on the CPU stands in), training attention
/// keeps no logits: its backward recomputes them a chunk of heads at a time. Output and qkv
/// gradient equal the composed path's, with one chunk and with several.
#[test]
fn recomputed_attention_matches_the_composed_path() {
    use msa::model::attention::Attention;
    use msa::model::nn::Linear;
    let (b, h, w, heads, hd) = (2, 5, 4, 3, 4);
    let c = heads * hd;
    let f64t = |t: Tensor| t.to_dtype(DType::F64).unwrap();
    let unused = Linear {
        weight: f64t(rand(&[c, c], 30)),
        bias: None,
    };
    let mut attn = Attention {
        qkv: unused.clone(),
        proj: unused,
        num_heads: heads,
        scale: (hd as f64).powf(-0.5),
        rel_pos: Some((
            f64t(rand(&[2 * h - 1, hd], 31)),
            f64t(rand(&[2 * w - 1, hd], 32)),
        )),
        lora: None,
        logits_budget: 1 << 20,
        flash: false,
        tensor_cores: false,
    };
    let qkv = Var::from_tensor(&f64t(rand(&[b, h, w, 3 * c], 33))).unwrap();
    let weights = f64t(rand(&[b, h, w, c], 34));
    let grad_of = |out: &Tensor| {
        input_grad(out, &weights, &qkv)
            .to_dtype(DType::F32)
            .unwrap()
    };
    let reference = attn.core_ops(qkv.as_tensor()).unwrap();
    let ref_grad = grad_of(&reference);
    for budget in [1 << 20, 2 * (h * w) * (h * w) * 4] {
        // 1 MiB: one chunk; two heads' logits: three chunks of the six (item, head) rows.
        attn.logits_budget = budget;
        let ours = attn.core(qkv.as_tensor()).unwrap();
        let f32t = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        assert_close("recomputed output", &f32t(&ours), &f32t(&reference), 1e-6);
        assert_close("recomputed qkv gradient", &grad_of(&ours), &ref_grad, 1e-6);
    }
}

/// Full fine-tuning of a windowed block (tiny config: an 8 x 8 grid in windows of 3, so
/// padded to 9 x 9): projecting only image tokens and filling the padding with the qkv bias
/// gives SAM's output and the same gradient for every weight as SAM's order (pad norm1(x)
/// with zeros, project every window, crop).
#[test]
fn windowed_block_keeps_sam_gradients_when_every_weight_trains() {
    use msa::model::attention::{window_partition, window_unpartition};
    use msa::model::vit::Block;
    use msa::model::SamConfig;
    use msa::weights::{Params, Source};
    let cfg = SamConfig::from_json_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sam_tiny.json"
    )))
    .unwrap();
    let params = Params::train_all(Source::Random { std: 0.2 }, &Device::Cpu, 0);
    let vit = cfg.vit().unwrap();
    let block = Block::load(&params.pp("blocks.0"), vit, cfg.grid(), 0).unwrap();
    assert_eq!(block.window_size, 3);
    let x = rand(&[2, 8, 8, vit.embed_dim], 30);
    let xn = block.norm1.forward(&x).unwrap();
    let ours = block.spatial_attention(&xn).unwrap();
    let (windows, padded) = window_partition(&xn, 3).unwrap();
    let attended = block.attn.forward(&windows).unwrap();
    let sam_order = window_unpartition(&attended, 3, padded, (8, 8)).unwrap();
    assert_close("windowed attention", &ours, &sam_order, 1e-5);

    let weights = rand(ours.dims(), 31);
    let grads_of = |out: &Tensor| {
        (out * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    };
    let (g_ours, g_sam) = (grads_of(&ours), grads_of(&sam_order));
    let vars = params.trainables();
    assert!(vars.contains_key("blocks.0.attn.qkv.bias"));
    let on_path = vars
        .iter()
        .filter(|(k, _)| k.contains(".attn.") || k.contains(".norm1."));
    let mut checked = 0;
    for (key, var) in on_path {
        checked += 1;
        let (Some(a), Some(r)) = (g_ours.get(var.as_tensor()), g_sam.get(var.as_tensor())) else {
            panic!("{key}: no gradient");
        };
        assert_close(key, a, r, 1e-4);
    }
    // qkv and proj weight and bias, two rel-pos tables, norm1 weight and bias.
    assert_eq!(checked, 8);
}

/// softmax(scale q kᵀ + table) v with primitive ops, q, k, v per head as TinyViT lays
/// them out: qkv (B, N, heads * 3hd), table (heads, N, N).
fn table_attention_reference(qkv: &Tensor, table: &Tensor, (heads, hd): (usize, usize)) -> Tensor {
    let (b, n, _) = qkv.dims3().unwrap();
    let qkv = qkv.reshape((b, n, heads, 3 * hd)).unwrap();
    let part = |i: usize| {
        qkv.narrow(3, i * hd, hd)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k, v) = (part(0), part(1), part(2));
    let logits = (q.matmul(&k.t().unwrap()).unwrap() * (hd as f64).powf(-0.5))
        .unwrap()
        .broadcast_add(&table.unsqueeze(0).unwrap())
        .unwrap();
    softmax(&logits)
        .matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, n, heads * hd))
        .unwrap()
}

#[test]
fn table_attention_matches_composed_ops_with_several_row_blocks() {
    use msa::kernels::attention::cpu_backward::TableAttention;
    // 150 tokens: three query-row blocks per head, the last one short.
    let (b, n, heads, hd) = (2, 150, 3, 8);
    let qkv = Var::from_tensor(&rand(&[b, n, 3 * heads * hd], 31)).unwrap();
    let table = Var::from_tensor(&rand(&[heads, n, n], 32)).unwrap();
    let op = TableAttention {
        heads,
        head_dim: hd,
        scale: (hd as f32).powf(-0.5),
    };
    let ours = qkv.as_tensor().apply_op2(table.as_tensor(), op).unwrap();
    let reference = table_attention_reference(qkv.as_tensor(), table.as_tensor(), (heads, hd));
    assert_close("table attention", &ours, &reference, 1e-5);
    let weights = rand(&[b, n, heads * hd], 33);
    let names = ["d qkv", "d table"];
    assert_same_grads(&ours, &reference, &weights, [&qkv, &table], names, 1e-4);
}

#[test]
fn fused_depthwise_conv_and_gelu_match_the_training_op() {
    use msa::kernels::depthwise::{depthwise_forward, DepthwiseConv, DepthwiseGeometry};
    let x = rand(&[2, 9, 7, 12], 41);
    let taps = rand(&[9, 12], 42);
    let bias = rand(&[12], 43);
    for stride in [1, 2] {
        let g = DepthwiseGeometry {
            kernel: 3,
            stride,
            padding: 1,
        };
        let reference = x.apply_op3(&taps, &bias, DepthwiseConv(g)).unwrap();
        let plain = depthwise_forward(&x, &taps, &bias, g, false).unwrap();
        assert_close("depthwise conv", &plain, &reference, 1e-6);
        let fused = depthwise_forward(&x, &taps, &bias, g, true).unwrap();
        assert_close(
            "depthwise conv + GELU",
            &fused,
            &reference.gelu_erf().unwrap(),
            1e-5,
        );
    }
}

#[test]
fn fused_linear_with_residual_and_gelu_matches_composed_ops() {
    use msa::kernels::linear::Epilogue;
    use msa::model::nn::Linear;
    // 3000 rows: several row tiles, the last one short.
    let x = rand(&[3, 1000, 24], 51);
    let linear = Linear {
        weight: rand(&[40, 24], 52),
        bias: Some(rand(&[40], 53)),
    };
    let residual = rand(&[3, 1000, 40], 54);
    let affine = x
        .broadcast_matmul(&linear.weight.t().unwrap())
        .unwrap()
        .broadcast_add(linear.bias.as_ref().unwrap())
        .unwrap();
    let plain = linear.forward_act(&x, None, Epilogue::None).unwrap();
    assert_close("linear", &plain, &affine, 1e-5);
    let fused = linear
        .forward_act(&x, Some(&residual), Epilogue::Gelu)
        .unwrap();
    let reference = (affine + &residual).unwrap().gelu_erf().unwrap();
    assert_close("linear + residual + GELU", &fused, &reference, 1e-5);
}

#[test]
fn frozen_mlp_matches_composed_ops_and_their_input_gradient() {
    use msa::kernels::linear::FrozenMlp;
    // 600 rows: three backward tiles, the last one short.
    let x = Var::from_tensor(&rand(&[2, 300, 12], 61)).unwrap();
    let (w1, b1) = (rand(&[40, 12], 62), rand(&[40], 63));
    let (w2, b2) = (rand(&[10, 40], 64), rand(&[10], 65));
    let op = FrozenMlp {
        fc1: (w1.clone(), b1.clone()),
        fc2: (w2.clone(), b2.clone()),
    };
    let ours = x.as_tensor().apply_op1(op).unwrap();
    let hidden = x
        .as_tensor()
        .broadcast_matmul(&w1.t().unwrap())
        .unwrap()
        .broadcast_add(&b1)
        .unwrap()
        .gelu_erf()
        .unwrap();
    let reference = hidden
        .broadcast_matmul(&w2.t().unwrap())
        .unwrap()
        .broadcast_add(&b2)
        .unwrap();
    assert_close("frozen MLP", &ours, &reference, 1e-5);
    let weights = rand(&[2, 300, 10], 66);
    assert_same_grads(&ours, &reference, &weights, [&x], ["d x"], 1e-4);
}

#[test]
fn attention_with_few_keys_matches_composed_ops_for_several_items() {
    use msa::kernels::attention::cpu::{attention_general, Bias, Dims, Operand};
    // Two items of 300 queries (a partial 256-row chunk each) against 7 keys.
    let (b, nq, nk, heads, hd) = (2, 300, 7, 2, 8);
    let c = heads * hd;
    let (q, k, v) = (
        rand(&[b, nq, c], 71),
        rand(&[b, nk, c], 72),
        rand(&[b, nk, c], 73),
    );
    let scale = (hd as f32).powf(-0.5);
    let [qs, ks, vs] = [&q, &k, &v].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    fn operand(data: &[f32], n: usize, c: usize, hd: usize) -> Operand<'_> {
        Operand {
            data,
            row_stride: c,
            batch_stride: n * c,
            head_stride: hd,
        }
    }
    let dims = Dims {
        b,
        nq,
        nk,
        heads,
        head_dim: hd,
        grid: (1, nk),
    };
    let out = attention_general(
        operand(&qs, nq, c, hd),
        operand(&ks, nk, c, hd),
        operand(&vs, nk, c, hd),
        dims,
        scale,
        Bias::None,
    );
    let ours = Tensor::from_vec(out, (b, nq, c), &Device::Cpu).unwrap();
    let split = |t: &Tensor, n: usize| {
        t.reshape((b, n, heads, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (qh, kh, vh) = (split(&q, nq), split(&k, nk), split(&v, nk));
    let logits = (qh.matmul(&kh.t().unwrap()).unwrap() * scale as f64).unwrap();
    let reference = softmax(&logits)
        .matmul(&vh)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, nq, c))
        .unwrap();
    assert_close("attention with few keys", &ours, &reference, 1e-5);
}

/// The gradients of the training ops' parameters, computed on `threads` threads.
fn parameter_grads(threads: usize) -> Vec<Vec<f32>> {
    use msa::kernels::attention::cpu_backward::TableAttention;
    use msa::kernels::depthwise::{DepthwiseConv, DepthwiseGeometry};
    use msa::kernels::layer_norm::TrainableLayerNorm;
    use msa::kernels::linear::TrainableLinear;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let grads = |out: Tensor, weights: Tensor, vars: &[&Var]| {
            let g = (out * weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            vars.iter()
                .map(|v| {
                    let t = g.get(v.as_tensor()).unwrap();
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                })
                .collect::<Vec<_>>()
        };
        let mut all = vec![];
        let (x, w, b) = (rand(&[3, 500, 40], 61), rand(&[40], 62), rand(&[40], 63));
        let (w, b) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
        let out = x
            .apply_op3(
                w.as_tensor(),
                b.as_tensor(),
                TrainableLayerNorm { eps: 1e-6 },
            )
            .unwrap();
        all.extend(grads(out, rand(&[3, 500, 40], 64), &[&w, &b]));
        let x = rand(&[4, 300, 24], 65);
        let (w, b) = (rand(&[10, 24], 66), rand(&[10], 67));
        let (w, b) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
        let out = x
            .apply_op3(w.as_tensor(), b.as_tensor(), TrainableLinear)
            .unwrap();
        all.extend(grads(out, rand(&[4, 300, 10], 68), &[&w, &b]));
        let x = rand(&[2, 30, 17, 12], 69);
        let (taps, bias) = (rand(&[9, 12], 70), rand(&[12], 71));
        let (taps, bias) = (
            Var::from_tensor(&taps).unwrap(),
            Var::from_tensor(&bias).unwrap(),
        );
        let geometry = DepthwiseGeometry {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let out = x
            .apply_op3(taps.as_tensor(), bias.as_tensor(), DepthwiseConv(geometry))
            .unwrap();
        all.extend(grads(out, rand(&[2, 30, 17, 12], 72), &[&taps, &bias]));
        let (b, n, heads, hd) = (4, 150, 3, 8);
        let qkv = rand(&[b, n, 3 * heads * hd], 73);
        let table = Var::from_tensor(&rand(&[heads, n, n], 74)).unwrap();
        let op = TableAttention {
            heads,
            head_dim: hd,
            scale: (hd as f32).powf(-0.5),
        };
        let out = qkv.apply_op2(table.as_tensor(), op).unwrap();
        all.extend(grads(out, rand(&[b, n, heads * hd], 75), &[&table]));
        // The fill token of a padded window partition: 2 x 6 x 6 windows of 7 rows.
        let x = rand(&[2, 40, 37, 16], 76);
        let fill = Var::from_tensor(&rand(&[16], 77)).unwrap();
        let windows = Windows {
            hw: (40, 37),
            ws: 7,
        };
        let out = x
            .apply_op2(fill.as_tensor(), FilledWindowPartition(windows))
            .unwrap();
        let weights = rand(out.dims(), 78);
        all.extend(grads(out, weights, &[&fill]));
        all
    })
}

/// Parameter gradients are sums over rows and heads; summed in a fixed order, they have the
/// same bits on one thread and on several, so that a training run repeats exactly.
#[test]
fn parameter_gradients_have_the_same_bits_whatever_the_thread_count() {
    let one = parameter_grads(1);
    for threads in [3, 4] {
        let many = parameter_grads(threads);
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "gradient {i} differs between 1 and {threads} threads");
        }
    }
}

/// SAM's biased attention as plain attention of wider q and k (model::rel_pos_columns):
/// outputs and the gradients of qkv and of both tables agree with the composed reference,
/// so a fused kernel without bias support computes SAM's attention and its backward.
#[test]
fn relative_position_bias_as_extra_columns_is_exact() {
    use msa::model::rel_pos_columns::bias_as_columns;
    let (b, h, w, heads, hd) = (2, 7, 5, 3, 8);
    let (n, c) = (h * w, heads * hd);
    let scale = (hd as f64).powf(-0.5);
    let qkv = Var::from_tensor(&rand(&[b, n, 3 * c], 81)).unwrap();
    let rh = Var::from_tensor(&(rand(&[h, h, hd], 82) * 0.5).unwrap()).unwrap();
    let rw = Var::from_tensor(&(rand(&[w, w, hd], 83) * 0.5).unwrap()).unwrap();
    let weights = rand(&[b, n, c], 84);
    let reference = attention_reference(
        qkv.as_tensor(),
        (b, h, w),
        (heads, hd),
        scale,
        rh.as_tensor(),
        rw.as_tensor(),
    );
    let parts = qkv
        .as_tensor()
        .reshape((b, n, 3, heads, hd))
        .unwrap()
        .permute((2, 0, 3, 1, 4))
        .unwrap();
    let take = |i: usize| parts.get(i).unwrap().reshape((b * heads, n, hd)).unwrap();
    let (q, k, v) = (take(0), take(1), take(2));
    let (qw, kw) = bias_as_columns(&q, &k, rh.as_tensor(), rw.as_tensor(), (h, w), scale).unwrap();
    assert_eq!(qw.dims(), &[b * heads, n, hd + h + w]);
    let plain = softmax(&qw.matmul(&kw.t().unwrap()).unwrap())
        .matmul(&v)
        .unwrap()
        .reshape((b, heads, n, hd))
        .unwrap()
        .permute((0, 2, 1, 3))
        .unwrap()
        .reshape((b, n, c))
        .unwrap();
    assert_close("attention output", &plain, &reference, 1e-5);
    for (name, input) in [("qkv", &qkv), ("Rh", &rh), ("Rw", &rw)] {
        assert_close(
            &format!("{name} gradient"),
            &input_grad(&plain, &weights, input),
            &input_grad(&reference, &weights, input),
            1e-4,
        );
    }
}

/// A layer run through `backward_op::recomputed` (no graph kept, rebuilt in the backward) gives the
/// composed layer's output and input gradient: here the depthwise convolution, which GPUs
/// run that way.
#[test]
fn recomputed_depthwise_conv_matches_the_composed_one() {
    use msa::kernels::backward_op::recomputed;
    use msa::kernels::depthwise::{depthwise_conv_ops, DepthwiseGeometry};
    let (b, h, w, c) = (2, 9, 7, 5);
    for stride in [1, 2] {
        let g = DepthwiseGeometry {
            kernel: 3,
            stride,
            padding: 1,
        };
        let x = Var::from_tensor(&rand(&[b, h, w, c], 91)).unwrap();
        let (taps, bias) = (rand(&[9, c], 92), rand(&[c], 93));
        let composed = depthwise_conv_ops(x.as_tensor(), &taps, &bias, g).unwrap();
        let (t, bi) = (taps.clone(), bias.clone());
        let ours = recomputed(x.as_tensor(), "test-depthwise", move |x| {
            depthwise_conv_ops(x, &t, &bi, g)
        })
        .unwrap();
        assert_close("recomputed depthwise output", &ours, &composed, 1e-6);
        let weights = rand(composed.dims(), 94);
        assert_close(
            "recomputed depthwise input gradient",
            &input_grad(&ours, &weights, &x),
            &input_grad(&composed, &weights, &x),
            1e-6,
        );
    }
}
