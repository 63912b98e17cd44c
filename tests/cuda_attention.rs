//! The CUDA attention kernels (kernels::attention_cuda) on SAM's biased attention, through
//! `bias_as_columns`, against the same maths in candle's composed ops on the GPU: output
//! and the gradients of q, k, v and both tables. Runs in a `--features cuda` build on a GPU
//! (bench/gpu_all.sh); a CPU build compiles nothing here.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{Device, Tensor, Var, D};
use msa::kernels::attention_cuda::FlashAttention;
use msa::model::rel_pos_columns::bias_as_columns;

fn softmax(x: &Tensor) -> Tensor {
    let max = x.max_keepdim(D::Minus1).unwrap().detach();
    let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
    e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
}

#[test]
fn fused_cuda_attention_matches_composed_ops_with_sam_bias() {
    let dev = Device::new_cuda(0).expect("a GPU");
    // A 14 x 14 window (SAM's windowed blocks) and a 32 x 32 global grid, head dim 64.
    for (bh, h, w) in [(6usize, 14usize, 14usize), (2, 32, 32)] {
        let (n, hd) = (h * w, 64);
        let scale = (hd as f64).powf(-0.5);
        let var = |shape: &[usize], s: f64| {
            Var::from_tensor(&(Tensor::randn(0f32, 1f32, shape, &dev).unwrap() * s).unwrap())
                .unwrap()
        };
        let (q, k, v) = (
            var(&[bh, n, hd], 1.0),
            var(&[bh, n, hd], 1.0),
            var(&[bh, n, hd], 1.0),
        );
        let (rh, rw) = (var(&[h, h, hd], 0.3), var(&[w, w, hd], 0.3));
        let weights = Tensor::randn(0f32, 1f32, (bh, n, hd), &dev).unwrap();
        let (qw, kw) = bias_as_columns(
            q.as_tensor(),
            k.as_tensor(),
            rh.as_tensor(),
            rw.as_tensor(),
            (h, w),
            scale,
        )
        .unwrap();
        let fused = qw
            .contiguous()
            .unwrap()
            .apply_op3(&kw.contiguous().unwrap(), v.as_tensor(), FlashAttention)
            .unwrap();
        let composed = softmax(&qw.matmul(&kw.t().unwrap()).unwrap())
            .matmul(v.as_tensor())
            .unwrap();
        let e = common::relative_error(&fused, &composed);
        assert!(e < 1e-5, "{h}x{w}: output relative error {e:e}");
        let grads = |out: &Tensor| {
            (out * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (gf, gc) = (grads(&fused), grads(&composed));
        for (name, x) in [("q", &q), ("k", &k), ("v", &v), ("Rh", &rh), ("Rw", &rw)] {
            let e = common::relative_error(
                gf.get(x.as_tensor()).unwrap(),
                gc.get(x.as_tensor()).unwrap(),
            );
            assert!(e < 1e-4, "{h}x{w}: d{name} relative error {e:e}");
        }
    }
}
