//! Bit-reproducible training: `msa train` on the tiny TinyViT model with the same seed gives
//! the same adapters and the same Adam state, bit for bit, whatever the thread count.
//!
//! Three child processes of the built `msa` train encoder and decoder adapters
//! (`--train adapters`) for one epoch with RAYON_NUM_THREADS=1, 2 and 3 (candle and our
//! kernels size their thread pools from it). Every tensor of `adapters_last.safetensors` and
//! `state_last.safetensors` (parameters, Adam's first and second moments) must have the
//! same bytes in all three. A second test does the same under full fine-tuning (`--train
//! all`) on 1 and 3 threads.
//!
//! The sizes make the work split. Counted once with logging in the kernels, one run on 3
//! threads (one epoch at 64 px, batch 2, and its validation) made about 120 gemm calls large
//! enough for gemm to spread across its threads (above its threading threshold), 69
//! `ordered_reduce` calls with 8 to 36 partial sums (the adapters' bias gradients, the
//! attention backward), and 289 `par_filled` calls with 2 to 128 chunks; candle's matmuls
//! in the mask decoder run on all threads too.

mod common;

use common::{fixture, tensors};
use msa::weights::{is_adapter_key, save_safetensors, Checkpoint};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tiny TinyViT without its adapter tensors, in f32, as a base checkpoint.
fn base(dir: &Path) -> PathBuf {
    let mut ckpt = Checkpoint::read(&fixture("tinyvit_tiny.safetensors")).unwrap();
    ckpt.tensors.retain(|k, _| !is_adapter_key(k));
    let tensors: BTreeMap<String, candle_core::Tensor> = ckpt
        .tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(candle_core::DType::F32).unwrap()))
        .collect();
    let path = dir.join("tinyvit_base.safetensors");
    save_safetensors(&path, &tensors, None).unwrap();
    path
}

fn train(base: &Path, data: &Path, out: &Path, (mode, threads): (&str, usize)) {
    let o = Command::new(env!("CARGO_BIN_EXE_msa"))
        .arg("train")
        .arg("--checkpoint")
        .arg(base)
        .arg("--model-config")
        .arg(fixture("tinyvit_tiny.json"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--train", mode, "--adapter-init", "torch"])
        .args(["--epochs", "1", "--batch-size", "2", "--seed", "7"])
        .args(["--workers", "1", "--samples", "0"])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env_remove("CANDLE_NUM_THREADS")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "--train {mode} on {threads} thread(s) failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The first key (in key order) whose tensor differs between `a` and `b`, with why.
fn first_difference(
    a: &BTreeMap<String, (String, Vec<usize>, Vec<u8>)>,
    b: &BTreeMap<String, (String, Vec<usize>, Vec<u8>)>,
) -> Option<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) if (&x.0, &x.1) != (&y.0, &y.1) => {
                return Some(format!(
                    "`{k}`: {} {:?} against {} {:?}",
                    x.0, x.1, y.0, y.1
                ));
            }
            (Some(x), Some(y)) => {
                let at = x.2.iter().zip(&y.2).position(|(p, q)| p != q).unwrap_or(0);
                return Some(format!(
                    "`{k}`: bytes differ from byte {at} of {}",
                    x.2.len()
                ));
            }
            (Some(_), None) => return Some(format!("`{k}` is missing from the second run")),
            (None, _) => return Some(format!("`{k}` is missing from the first run")),
        }
    }
    None
}

/// Trains `mode` once per thread count in `threads` and checks that the adapter file and
/// the run state of every run have the bytes of the first.
fn assert_same_bits(mode: &str, threads: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let base = base(dir.path());
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 8, (96, 80), 11).unwrap();
    let runs: Vec<(usize, PathBuf)> = threads
        .iter()
        .map(|&threads| {
            let out = dir.path().join(format!("threads{threads}"));
            train(&base, &data, &out, (mode, threads));
            (threads, out)
        })
        .collect();
    let (first_threads, first) = &runs[0];
    for name in ["adapters_last.safetensors", "state_last.safetensors"] {
        let reference = tensors(&first.join(name));
        assert!(!reference.is_empty(), "{name} holds no tensors");
        if name.starts_with("state") {
            for part in ["param/", "adam_m/", "adam_v/"] {
                assert!(
                    reference.keys().any(|k| k.starts_with(part)),
                    "{name} has no `{part}` tensors"
                );
            }
        }
        for (threads, out) in &runs[1..] {
            let other = tensors(&out.join(name));
            if let Some(diff) = first_difference(&reference, &other) {
                panic!(
                    "--train {mode}, {name}: {first_threads} thread(s) against {threads}: {diff}"
                );
            }
        }
    }
}

#[test]
fn training_gives_the_same_bits_on_one_two_and_three_threads() {
    assert_same_bits("adapters", &[1, 2, 3]);
}

/// Under full fine-tuning the parameter-gradient reductions all run: LayerNorm and
/// depthwise convolution weights, TinyViT's attention-bias tables, and the window padding's
/// fill token (the qkv projection of the LayerNorm's bias).
#[test]
fn full_fine_tuning_gives_the_same_bits_on_one_and_three_threads() {
    assert_same_bits("all", &[1, 3]);
}
