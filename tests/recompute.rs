//! `--checkpoint-blocks`: recomputing the encoder's blocks in the backward pass gives the
//! gradients of the ordinary backward pass, for the ViT (2D and with the depth branch) and
//! for TinyViT, under adapters and under full fine-tuning.

mod common;

use candle_core::{DType, Device, Tensor};
use common::fixture;
use msa::model::recompute::Recompute;
use msa::model::{AdapterConfig, AdapterInit, MaskSelection, Prompts, Sam, SamConfig};
use msa::weights::{is_adapter_key, Checkpoint, Params, Source};
use std::sync::Arc;

fn base(file: &str) -> Source {
    let mut ckpt = Checkpoint::read(&fixture(file)).unwrap();
    ckpt.tensors.retain(|k, _| !is_adapter_key(k));
    Source::from(ckpt)
}

/// Every trainable tensor's gradient after one loss, with or without recomputation.
fn grads(
    sam: &Sam,
    params: &Params,
    depth: Option<usize>,
    recompute: bool,
) -> Vec<(String, Option<Tensor>)> {
    let vars = params.trainables();
    let recompute = recompute.then(|| Recompute::new(vars.values()));
    let (b, s) = (depth.unwrap_or(2), sam.config.img_size);
    let mut g = {
        let x = common_input(b, s);
        let emb = sam
            .encode_for_training(&x, depth, recompute.as_ref())
            .unwrap();
        let prompts = Prompts {
            points: Some((
                (Tensor::ones((b, 1, 2), DType::F32, &Device::Cpu).unwrap() * (s as f64 * 0.4))
                    .unwrap(),
                Tensor::ones((b, 1), DType::F32, &Device::Cpu).unwrap(),
            )),
            ..Default::default()
        };
        let out = sam.decode(&emb, &prompts).unwrap();
        let (low, _) = out.select(MaskSelection::Classes(1)).unwrap();
        let loss = low.sqr().unwrap().mean_all().unwrap();
        loss.backward().unwrap()
    };
    if let Some(r) = &recompute {
        r.merge_into(&mut g).unwrap();
    }
    let found = vars
        .iter()
        .map(|(k, v)| (k.clone(), g.get(v.as_tensor()).map(Tensor::detach)))
        .collect();
    drop(g);
    if let Some(r) = &recompute {
        // Gradients can hold the step's graph; once they are gone, so are its blocks.
        assert_eq!(
            Arc::strong_count(r),
            1,
            "a graph still holds recomputed blocks"
        );
    }
    found
}

/// A fixed input (the same on both passes): a smooth pattern per image.
fn common_input(b: usize, s: usize) -> Tensor {
    let v: Vec<f32> = (0..b * 3 * s * s)
        .map(|i| ((i % 97) as f32 * 0.37).sin())
        .collect();
    Tensor::from_vec(v, (b, 3, s, s), &Device::Cpu).unwrap()
}

fn check(file: &str, cfg: &SamConfig, ad: AdapterConfig, full: bool, depth: Option<usize>) {
    let params = match full {
        true => Params::train_all(base(file), &Device::Cpu, 3),
        false => Params::with_options(base(file), &Device::Cpu, true, 3),
    };
    let sam = Sam::load_adapted(&params, cfg, &ad).unwrap();
    let plain = grads(&sam, &params, depth, false);
    let recomputed = grads(&sam, &params, depth, true);
    let mut encoder_grads = 0;
    for ((name, a), (_, b)) in plain.iter().zip(&recomputed) {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => continue, // not on the loss's path (the IoU head)
            _ => panic!("{file} {name}: a gradient on one pass only"),
        };
        let diff = common::max_abs_diff(a, b);
        let scale = common::max_abs(a);
        assert!(
            diff <= 1e-5 * scale.max(1e-12),
            "{file} {name}: |diff| {diff} against max |grad| {scale}"
        );
        if name.starts_with("image_encoder.") && scale > 0.0 {
            encoder_grads += 1;
        }
    }
    assert!(
        encoder_grads > 0,
        "{file}: no encoder tensor had a gradient"
    );
}

fn adapters(depth: bool) -> AdapterConfig {
    AdapterConfig {
        encoder: true,
        decoder: true,
        depth,
        depth_chunk: 2,
        init: AdapterInit::Torch,
        ..AdapterConfig::default()
    }
}

#[test]
fn recomputed_vit_blocks_give_the_same_adapter_gradients() {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    check("sam_tiny.safetensors", &cfg, adapters(false), false, None);
}

#[test]
fn recomputed_vit_blocks_with_the_depth_branch_give_the_same_gradients() {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    check("sam_tiny.safetensors", &cfg, adapters(true), false, Some(2));
}

#[test]
fn recomputed_tinyvit_blocks_give_the_same_adapter_gradients() {
    let cfg = SamConfig::from_json_file(&fixture("tinyvit_tiny.json")).unwrap();
    check(
        "tinyvit_tiny.safetensors",
        &cfg,
        adapters(false),
        false,
        None,
    );
}

#[test]
fn recomputed_blocks_give_the_same_gradients_when_every_weight_trains() {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    check(
        "sam_tiny.safetensors",
        &cfg,
        AdapterConfig::none(),
        true,
        None,
    );
}

/// Every weight trains, with the depth branch of the adapted blocks (`msa train --3d --train
/// all --checkpoint-blocks` adds depth adapters only; these add encoder and decoder adapters
/// as well, so every adapter kind is checked too).
#[test]
fn recomputed_tinyvit_blocks_give_the_same_gradients_when_every_weight_trains_in_3d() {
    let cfg = SamConfig::from_json_file(&fixture("tinyvit_tiny.json")).unwrap();
    check(
        "tinyvit_tiny.safetensors",
        &cfg,
        adapters(true),
        true,
        Some(2),
    );
}
