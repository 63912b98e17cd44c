//! `model::own_backward`'s layers (a forward pass outside the graph, an input-gradient formula of
//! their own) against the same maths in candle's composed ops, whose gradients candle's
//! autograd derives. In f64 on the CPU, which is the path GPUs take; with
//! MSA_TEST_DEVICE=cuda also on the GPU, where the backward passes are the fused kernels of
//! `kernels::fused_backward`.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use msa::model::own_backward::{self, Activation};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A fixed, seed-dependent pattern with both signs and varied magnitudes.
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| {
            let t = (i as f64 + 1.0) * (0.37 + seed as f64 * 0.11);
            (t.sin() * 1.7 + (3.1 * t).cos() * 0.6) * (1.0 + (i % 3) as f64 * 0.2)
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// y and dL/dx for L = Σ y ⊙ r, with `f` applied to a variable x.
fn value_and_grad(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> (Tensor, Tensor) {
    let x = Var::from_tensor(x).unwrap();
    let y = f(x.as_tensor()).unwrap();
    let r = randn(y.dims(), 9)
        .to_dtype(y.dtype())
        .unwrap()
        .to_device(y.device())
        .unwrap();
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (
        y,
        grads.get(x.as_tensor()).expect("x has a gradient").clone(),
    )
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// The frozen form and the composed one agree on the output and the input gradient.
fn check(
    what: &str,
    x: &Tensor,
    ours: impl Fn(&Tensor) -> Result<Tensor>,
    composed: impl Fn(&Tensor) -> Result<Tensor>,
) {
    let (y, dx) = value_and_grad(x, ours);
    let (y_ref, dx_ref) = value_and_grad(x, composed);
    let (ey, edx) = (max_diff(&y, &y_ref), max_diff(&dx, &dx_ref));
    eprintln!("{what}: output {ey:e}, input gradient {edx:e}");
    assert!(ey < 1e-12 && edx < 1e-12, "{what}: {ey:e} {edx:e}");
    assert!(max_diff(&dx_ref, &dx_ref.zeros_like().unwrap()) > 1e-3);
}

fn affine(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.broadcast_matmul(&w.t()?)?.broadcast_add(b)
}

#[test]
fn frozen_linear_matches_composed_ops() {
    let (w, b) = (randn(&[5, 7], 1), randn(&[5], 2));
    let x = randn(&[2, 3, 7], 3);
    check(
        "linear",
        &x,
        |x| own_backward::linear(x, &w, Some(&b)),
        |x| affine(x, &w, &b),
    );
}

#[test]
fn frozen_mlp_matches_composed_ops_for_both_activations() {
    let (w1, b1) = (randn(&[12, 6], 4), randn(&[12], 5));
    let (w2, b2) = (randn(&[6, 12], 6), randn(&[6], 7));
    let x = randn(&[3, 4, 6], 8);
    for act in [Activation::Gelu, Activation::Relu] {
        check(
            &format!("mlp {act:?}"),
            &x,
            |x| own_backward::mlp(x, (&w1, Some(&b1)), (&w2, Some(&b2)), act),
            |x| {
                let z = affine(x, &w1, &b1)?;
                // GELU spelt out: candle's own gelu_erf backward rounds 1/√(2π) to 6 digits.
                let h = match act {
                    Activation::Gelu => {
                        ((z.affine(0.5f64.sqrt(), 0.)?.erf()? + 1.)? * 0.5)?.mul(&z)?
                    }
                    Activation::Relu => z.relu()?,
                };
                affine(&h, &w2, &b2)
            },
        );
    }
}

#[test]
fn frozen_layer_norm_matches_composed_ops() {
    let (w, b) = (randn(&[16], 10), randn(&[16], 11));
    let x = randn(&[3, 5, 16], 12).affine(3.0, 0.5).unwrap();
    check(
        "layer norm",
        &x,
        |x| own_backward::layer_norm(x, &w, &b, 1e-6),
        |x| {
            let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            xc.broadcast_div(&(var + 1e-6)?.sqrt()?)?
                .broadcast_mul(&w)?
                .broadcast_add(&b)
        },
    );
}

#[test]
fn frozen_softmax_matches_composed_ops() {
    let x = (randn(&[2, 6, 9], 13) * 4.0).unwrap();
    check("softmax", &x, own_backward::softmax, |x| {
        let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    });
}

/// Reduced precision: the forward is candle's kernel in the input's dtype, the backward
/// works in f32 and hands the gradient back in the input's dtype.
#[test]
fn frozen_layers_keep_the_input_dtype_in_f16() {
    let (w, b) = (randn(&[16], 10), randn(&[16], 11));
    let half = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
    let x = randn(&[4, 16], 12);
    let (y, dx) = value_and_grad(&half(&x), |x| {
        own_backward::layer_norm(x, &half(&w), &half(&b), 1e-6)
    });
    let (y_ref, dx_ref) = value_and_grad(&x, |x| own_backward::layer_norm(x, &w, &b, 1e-6));
    assert_eq!((y.dtype(), dx.dtype()), (DType::F16, DType::F16));
    let up = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let scale = max_diff(&dx_ref, &dx_ref.zeros_like().unwrap());
    let (ey, edx) = (
        max_diff(&up(&y), &y_ref),
        max_diff(&up(&dx), &dx_ref) / scale,
    );
    eprintln!("layer norm in f16: output {ey:e}, input gradient {edx:e} (relative)");
    assert!(ey < 2e-2 && edx < 5e-3, "{ey:e} {edx:e}");
}

/// `f` on the GPU in `dtype` against `f` in f64 on the CPU: output and input gradient,
/// relative to the reference's largest value.
fn check_on(
    what: &str,
    dev: &Device,
    dtype: DType,
    tol: f64,
    x: &Tensor,
    f: impl Fn(&Tensor, &dyn Fn(&Tensor) -> Tensor) -> Result<Tensor>,
) {
    let there = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(dev).unwrap();
    let (y, dx) = value_and_grad(&there(x), |x| f(x, &there));
    let (y_ref, dx_ref) = value_and_grad(x, |x| f(x, &|t| t.clone()));
    let back = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    };
    let rel =
        |a: &Tensor, b: &Tensor| max_diff(&back(a), b) / max_diff(b, &b.zeros_like().unwrap());
    let (ey, edx) = (rel(&y, &y_ref), rel(&dx, &dx_ref));
    eprintln!("{what} {dtype:?}: output {ey:e}, input gradient {edx:e} (relative)");
    assert!(ey < tol && edx < tol, "{what} {dtype:?}: {ey:e} {edx:e}");
    assert_eq!(
        dx.dtype(),
        dtype,
        "{what}: the gradient keeps the input's dtype"
    );
}

#[test]
fn frozen_layers_on_the_gpu_match_composed_ops() {
    let dev = common::device();
    if !dev.is_cuda() {
        eprintln!("skipped: needs MSA_TEST_DEVICE=cuda in a CUDA build");
        return;
    }
    let (w, b) = (randn(&[768], 10), randn(&[768], 11));
    let (w1, b1) = ((randn(&[96, 40], 4) * 0.2).unwrap(), randn(&[96], 5));
    let (w2, b2) = ((randn(&[40, 96], 6) * 0.2).unwrap(), randn(&[40], 7));
    let x_ln = randn(&[5, 7, 768], 12).affine(3.0, 0.5).unwrap();
    let x_sm = (randn(&[3, 37, 196], 13) * 4.0).unwrap();
    let x_mlp = randn(&[6, 11, 40], 8);
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 8e-2), (DType::F16, 1e-2)] {
        check_on("layer norm", &dev, dtype, tol, &x_ln, |x, on| {
            own_backward::layer_norm(x, &on(&w), &on(&b), 1e-6)
        });
        check_on("softmax", &dev, dtype, tol, &x_sm, |x, _| {
            own_backward::softmax(x)
        });
        for act in [Activation::Gelu, Activation::Relu] {
            check_on(
                &format!("mlp {act:?}"),
                &dev,
                dtype,
                tol,
                &x_mlp,
                |x, on| {
                    own_backward::mlp(
                        x,
                        (&on(&w1), Some(&on(&b1))),
                        (&on(&w2), Some(&on(&b2))),
                        act,
                    )
                },
            );
        }
    }
}

/// The mask decoder's attention with a gradient to compute is one op with its own backward
/// pass (`nn::MultiHeadAttention`): against the same attention in composed ops, in
/// f64, with every input needing a gradient and with some not.
#[test]
fn decoder_attention_matches_composed_ops() {
    use msa::model::mask_decoder::DecoderAttention;
    use msa::model::nn::Linear;
    let linear = |o: usize, i: usize, s: u64| Linear {
        weight: (randn(&[o, i], s) * 0.3).unwrap(),
        bias: Some(randn(&[o], s + 1)),
    };
    let (heads, inner, dim) = (2, 8, 12);
    let attn = DecoderAttention {
        q_proj: linear(inner, dim, 20),
        k_proj: linear(inner, dim, 22),
        v_proj: linear(inner, dim, 24),
        out_proj: linear(dim, inner, 26),
        num_heads: heads,
        flash: false,
    };
    let composed = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
        let split = |x: &Tensor| -> Result<Tensor> {
            let (b, n, c) = x.dims3()?;
            x.reshape((b, n, heads, c / heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
        let s = (qh.matmul(&kh.t()?)? / ((inner / heads) as f64).sqrt())?;
        let e = s.broadcast_sub(&s.max_keepdim(D::Minus1)?)?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let o = p.matmul(&vh)?.transpose(1, 2)?.contiguous()?;
        let (b, n, _, _) = o.dims4()?;
        attn.out_proj.forward(&o.reshape((b, n, inner))?)
    };
    let (q, k, v) = (
        randn(&[2, 5, inner], 30),
        randn(&[2, 9, inner], 31),
        randn(&[2, 9, inner], 32),
    );
    for trains in [
        [true, true, true],
        [true, false, true],
        [false, true, false],
    ] {
        let vars: Vec<Var> = [&q, &k, &v]
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let input = |i: usize| match trains[i] {
            true => vars[i].as_tensor().clone(),
            false => vars[i].as_tensor().detach(),
        };
        let r = randn(&[2, 5, dim], 9);
        let grads_of = |y: Tensor| (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let ours = attn
            .attend_projected(&input(0), &input(1), &input(2))
            .unwrap();
        let reference = composed(&input(0), &input(1), &input(2)).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-12, "output");
        let (g, g_ref) = (grads_of(ours), grads_of(reference));
        for (i, name) in ["q", "k", "v"].iter().enumerate() {
            match (g.get(vars[i].as_tensor()), g_ref.get(vars[i].as_tensor())) {
                (Some(a), Some(b)) => {
                    let e = max_diff(a, b);
                    eprintln!("decoder attention {trains:?}: d{name} {e:e}");
                    assert!(
                        e < 1e-12 && max_diff(b, &b.zeros_like().unwrap()) > 1e-3,
                        "d{name}"
                    );
                }
                (None, None) => assert!(!trains[i]),
                _ => panic!("d{name}: one side has a gradient, the other not"),
            }
        }
    }
}
