//! `kernels::attention::flash` against the same maths in candle's composed ops: SAM's biased
//! attention through `bias_as_columns` (a 14 x 14 window and a 32 x 32 global grid) and the
//! decoder's cross-attentions (few tokens over many image tokens, and back), output and
//! gradients. On the CPU this checks the loops that `cuda/attention.cu` runs; with
//! MSA_TEST_DEVICE=cuda in a `--features cuda` build it checks the CUDA kernels, and the
//! tensor-core kernels of `kernels::attention::tensor_cores` in bf16 and f16.

mod common;

use candle_core::{Tensor, Var, D};
use msa::kernels::attention::flash::FlashAttention;
use msa::kernels::attention::tensor_cores;
use msa::model::rel_pos_columns::{bias_as_columns, rel_terms};

fn softmax(x: &Tensor) -> Tensor {
    let max = x.max_keepdim(D::Minus1).unwrap().detach();
    let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
    e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
}

fn var(shape: &[usize], s: f64) -> Var {
    let t = Tensor::randn(0f32, 1f32, shape, &common::device()).unwrap();
    Var::from_tensor(&(t * s).unwrap()).unwrap()
}

/// Flash and composed attention of (q, k, v), with the gradients of `inputs` under a
/// random weighting of the output, compared within 1e-5 (output) and 1e-4 (gradients).
fn check(what: &str, q: &Tensor, k: &Tensor, v: &Tensor, inputs: &[(&str, &Var)]) {
    let flash = q
        .contiguous()
        .unwrap()
        .apply_op3(
            &k.contiguous().unwrap(),
            &v.contiguous().unwrap(),
            FlashAttention,
        )
        .unwrap();
    let composed = softmax(&q.matmul(&k.t().unwrap()).unwrap())
        .matmul(v)
        .unwrap();
    assert_eq!(flash.dims(), composed.dims(), "{what}: output shape");
    let e = common::relative_error(&flash, &composed);
    eprintln!("{what}: output relative error {e:e}");
    assert!(e < 1e-5, "{what}: output relative error {e:e}");
    let weights = Tensor::randn(0f32, 1f32, flash.dims(), flash.device()).unwrap();
    let (gf, gc) = (
        common::weighted_grads(&flash, &weights),
        common::weighted_grads(&composed, &weights),
    );
    for (name, x) in inputs {
        let (f, c) = (gf.get(x.as_tensor()), gc.get(x.as_tensor()));
        let e = common::relative_error(f.unwrap(), c.unwrap());
        eprintln!("{what}: d{name} relative error {e:e}");
        assert!(e < 1e-4, "{what}: d{name} relative error {e:e}");
    }
}

#[test]
fn flash_attention_matches_composed_ops_with_sam_bias() {
    // A 14 x 14 window (SAM's windowed blocks; 196 rows, not a multiple of the tiles) and a
    // 32 x 32 global grid, head dim 64.
    for (bh, h, w) in [(6usize, 14usize, 14usize), (2, 32, 32)] {
        let (n, hd) = (h * w, 64);
        let scale = (hd as f64).powf(-0.5);
        let (q, k, v) = (
            var(&[bh, n, hd], 1.0),
            var(&[bh, n, hd], 1.0),
            var(&[bh, n, hd], 1.0),
        );
        let (rh, rw) = (var(&[h, h, hd], 0.3), var(&[w, w, hd], 0.3));
        let (qw, kw) = bias_as_columns(
            q.as_tensor(),
            k.as_tensor(),
            rh.as_tensor(),
            rw.as_tensor(),
            (h, w),
            scale,
        )
        .unwrap();
        let inputs = [("q", &q), ("k", &k), ("v", &v), ("Rh", &rh), ("Rw", &rw)];
        check(&format!("{h}x{w}"), &qw, &kw, v.as_tensor(), &inputs);
    }
}

#[test]
fn flash_attention_matches_composed_ops_across_token_sets() {
    // The decoder's heads: 8 heads of 32 (or 16 after downsampling), 7 prompt tokens and
    // 300 image tokens, either way round.
    for (bh, nq, nk, hd) in [
        (8usize, 7usize, 300usize, 32usize),
        (8, 300, 7, 16),
        (3, 1, 1, 8),
    ] {
        let (q, k, v) = (
            var(&[bh, nq, hd], 0.5),
            var(&[bh, nk, hd], 0.5),
            var(&[bh, nk, hd], 1.0),
        );
        let inputs = [("q", &q), ("k", &k), ("v", &v)];
        let what = format!("{nq} queries over {nk} keys");
        check(&what, q.as_tensor(), k.as_tensor(), v.as_tensor(), &inputs);
    }
}

#[test]
fn flash_attention_names_shapes_it_cannot_take() {
    let t = |shape: &[usize]| var(shape, 1.0).as_tensor().clone();
    let mismatch = t(&[2, 5, 8]).apply_op3(&t(&[2, 6, 8]), &t(&[2, 7, 8]), FlashAttention);
    let e = mismatch.unwrap_err().to_string();
    assert!(e.contains("(BH, NK, HD)") && e.contains("[2, 7, 8]"), "{e}");
    let wide = t(&[1, 4, 300]).apply_op3(&t(&[1, 4, 300]), &t(&[1, 4, 8]), FlashAttention);
    let e = wide.unwrap_err().to_string();
    assert!(e.contains("up to 256") && e.contains("300"), "{e}");
    // Each fits alone, but their tiles would overflow the 48 KiB of shared memory.
    let both = t(&[1, 4, 256]).apply_op3(&t(&[1, 4, 256]), &t(&[1, 4, 128]), FlashAttention);
    let e = both.unwrap_err().to_string();
    assert!(
        e.contains("382 together") && e.contains("256 and 128"),
        "{e}"
    );
}

/// SAM's biased attention in candle's composed ops, through `bias_as_columns`.
fn composed_biased(
    [q, k, v]: [&Var; 3],
    (rh, rw): (&Var, &Var),
    grid: (usize, usize),
    scale: f64,
) -> Tensor {
    let (qw, kw) = bias_as_columns(
        q.as_tensor(),
        k.as_tensor(),
        rh.as_tensor(),
        rw.as_tensor(),
        grid,
        scale,
    )
    .unwrap();
    softmax(&qw.matmul(&kw.t().unwrap()).unwrap())
        .matmul(v.as_tensor())
        .unwrap()
}

/// `kernels::attention::tensor_cores` against composed ops on the same rounded inputs: SAM's 14 x 14 window
/// (196 tokens: partial tiles) and a 32 x 32 global grid, 64-wide heads, and the tiny
/// model's 16-wide heads. On a GPU the tensor-core kernels in bf16 and f16; on the CPU the
/// op's f64 reference loops, which check the packing and the gradients' way back to q, k, v
/// and the rel-pos tables.
#[test]
fn tensor_core_attention_matches_composed_ops() {
    use candle_core::DType;
    let dev = common::device();
    let cases: &[(DType, f32)] = if dev.is_cuda() {
        &[(DType::BF16, 2e-2), (DType::F16, 5e-3)]
    } else {
        &[(DType::F64, 1e-5), (DType::F32, 1e-5)]
    };
    for &(dtype, tol) in cases {
        for (bh, h, w, hd) in [
            (6usize, 14usize, 14usize, 64usize),
            (2, 32, 32, 64),
            (3, 8, 8, 16),
        ] {
            let n = h * w;
            let scale = (hd as f64).powf(-0.5);
            let round = |t: Var| {
                let r = t.as_tensor().to_dtype(dtype).unwrap().to_dtype(DType::F32);
                Var::from_tensor(&r.unwrap()).unwrap()
            };
            let (q, k, v) = (
                round(var(&[bh, n, hd], 1.0)),
                round(var(&[bh, n, hd], 1.0)),
                round(var(&[bh, n, hd], 1.0)),
            );
            let (rh, rw) = (round(var(&[h, h, hd], 0.3)), round(var(&[w, w, hd], 0.3)));
            let composed = composed_biased([&q, &k, &v], (&rh, &rw), (h, w), scale);
            let there = |x: &Var| x.as_tensor().to_dtype(dtype).unwrap();
            assert!(tensor_cores::supports(&there(&q), hd), "{dtype:?} {hd}");
            let rel = rel_terms(&there(&q), &there(&rh), &there(&rw), (h, w)).unwrap();
            let fused = tensor_cores::attention(
                &there(&q),
                &there(&k),
                &there(&v),
                Some(&rel),
                (h, w),
                scale,
            )
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
            let what = format!("{dtype:?} {h}x{w}, heads of {hd}");
            let e = common::relative_error(&fused, &composed);
            eprintln!("{what}: output relative error {e:e}");
            assert!(e < tol, "{what}: output relative error {e:e}");
            let weights = Tensor::randn(0f32, 1f32, composed.dims(), &dev).unwrap();
            let (gf, gc) = (
                common::weighted_grads(&fused, &weights),
                common::weighted_grads(&composed, &weights),
            );
            for (name, x) in [("q", &q), ("k", &k), ("v", &v), ("Rh", &rh), ("Rw", &rw)] {
                let f = gf.get(x.as_tensor()).expect("a fused gradient");
                let e = common::relative_error(f, gc.get(x.as_tensor()).unwrap());
                eprintln!("{what}: d{name} relative error {e:e}");
                assert!(e < 1.5 * tol, "{what}: d{name} relative error {e:e}");
            }
        }
    }
}
