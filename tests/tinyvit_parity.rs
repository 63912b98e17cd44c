//! The TinyViT backbone against the official TinyViT/SAM modules (MSA-SPEC 1.6, 2.6): a
//! tiny random model in LiteMedSAM's layout, frozen and with MSA adapters, its BCE loss,
//! every adapter gradient and the 3D depth branch.

mod common;

use candle_core::{DType, Tensor};
use common::{assert_close, check_golden_grads, device, fixture, load_cases};
use msa::model::{AdapterConfig, MaskSelection, ModelOptions, Prompts, Sam, SamConfig};
use msa::resize::bilinear;
use msa::train::loss::bce_with_logits;
use msa::weights::{detect, is_adapter_key, Checkpoint, Params, Source};

fn config() -> SamConfig {
    SamConfig::from_json_file(&fixture("tinyvit_tiny.json")).unwrap()
}

fn checkpoint(with_adapters: bool) -> Checkpoint {
    let mut ckpt = Checkpoint::read(&fixture("tinyvit_tiny.safetensors")).unwrap();
    if !with_adapters {
        ckpt.tensors.retain(|k, _| !is_adapter_key(k));
    }
    ckpt
}

fn model(ckpt: Checkpoint, ad: &AdapterConfig, train: bool) -> (Sam, Params) {
    model_in(ckpt, ad, train, DType::F32)
}

/// The encoder computing in `dtype`: f64 on the CPU takes the device-generic ops that GPUs
/// run (`model::frozen`, `model::recomputed`), not the CPU's f32 kernels.
fn model_in(ckpt: Checkpoint, ad: &AdapterConfig, train: bool, dtype: DType) -> (Sam, Params) {
    let params = Params::with_options(Source::from(ckpt), &device(), train, 0);
    let opts = ModelOptions {
        encoder_dtype: dtype,
        ..Default::default()
    };
    let sam = Sam::load_with(&params, &config(), ad, &opts).unwrap();
    let unused = params.unused_keys();
    assert!(unused.is_empty(), "unused keys: {unused:?}");
    (sam, params)
}

fn box_prompt(t: &std::collections::HashMap<String, Tensor>) -> Prompts {
    Prompts {
        boxes: Some(t["tiny.box"].reshape((1, 4)).unwrap()),
        ..Default::default()
    }
}

#[test]
fn frozen_tinyvit_matches_official_modules() {
    let (sam, _) = model(checkpoint(false), &AdapterConfig::none(), false);
    let t = load_cases("tinyvit_tiny_cases.safetensors");
    let emb = sam.encode(&t["tiny.input"]).unwrap();
    assert_close("embeddings", &emb, &t["tiny.image_embeddings"], 1e-4);
    let out = sam
        .decode(
            &t["tiny.image_embeddings"].narrow(0, 0, 1).unwrap(),
            &box_prompt(&t),
        )
        .unwrap();
    let (low, iou) = out.select(MaskSelection::Sam { multimask: true }).unwrap();
    assert_close(
        "box low_res_logits",
        &low,
        &t["tiny.box.multi.low_res_logits"],
        1e-4,
    );
    assert_close("box iou", &iou, &t["tiny.box.multi.iou"], 1e-4);
}

#[test]
fn shapes_tell_the_tinyvit_architecture() {
    let (name, mut cfg) = detect::detect_preset(&checkpoint(false)).unwrap();
    assert_eq!(name, "custom");
    assert_eq!(cfg.backbone_name(), "tiny_vit");
    let (t, golden) = (cfg.tiny_vit().unwrap(), config());
    let g = golden.tiny_vit().unwrap();
    assert_eq!(t.embed_dims, g.embed_dims);
    assert_eq!(t.depths, g.depths);
    assert_eq!(t.num_heads[1..], g.num_heads[1..]);
    assert_eq!(t.window_sizes[1..], g.window_sizes[1..]);
    assert_eq!(t.merge_strides, g.merge_strides);
    assert_eq!(
        (t.patch_embed_kernel, t.patch_embed_stride),
        (g.patch_embed_kernel, g.patch_embed_stride)
    );
    // The detected model computes the same embeddings once told the input size.
    cfg.img_size = 64;
    cfg.decoder_mlp_dim = golden.decoder_mlp_dim;
    cfg.decoder_num_heads = golden.decoder_num_heads;
    cfg.iou_head_hidden_dim = golden.iou_head_hidden_dim;
    let params = Params::new(Source::from(checkpoint(false)), &device());
    let sam = Sam::load(&params, &cfg).unwrap();
    let t = load_cases("tinyvit_tiny_cases.safetensors");
    let emb = sam.encode(&t["tiny.input"]).unwrap();
    assert_close("embeddings", &emb, &t["tiny.image_embeddings"], 1e-4);
}

/// |ours - golden| <= 1e-4 max|golden| + 1e-4 |golden|, elementwise (fixtures README).
fn check_grad(key: &str, ours: &Tensor, golden: &Tensor) {
    assert_eq!(ours.dims(), golden.dims(), "{key}");
    let o: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
    let g: Vec<f32> = golden.flatten_all().unwrap().to_vec1().unwrap();
    let scale = g.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{key}: golden gradient is all zero");
    for (i, (a, b)) in o.iter().zip(&g).enumerate() {
        let tol = 1e-4 * scale + 1e-4 * b.abs();
        assert!((a - b).abs() <= tol, "{key}[{i}]: ours {a:e} golden {b:e}");
    }
}

#[test]
fn adapted_tinyvit_loss_and_adapter_gradients_match_reference() {
    check_adapted(DType::F32);
}

#[test]
fn tinyvit_adapter_gradients_through_the_device_generic_ops_match_reference() {
    // A GPU takes these ops in f32 already, in the test above.
    if !device().is_cpu() {
        return;
    }
    check_adapted(DType::F64);
}

fn check_adapted(dtype: DType) {
    let ad = AdapterConfig {
        depth: true,
        ..AdapterConfig::default()
    };
    let (sam, params) = model_in(checkpoint(true), &ad, true, dtype);
    let t = load_cases("tinyvit_tiny_cases.safetensors");
    let emb = sam.encode(&t["tiny.input"]).unwrap();
    assert_close(
        "msa2d embeddings",
        &emb,
        &t["tiny.msa2d.image_embeddings"],
        1e-4,
    );
    let prompts = Prompts {
        points: Some((
            t["tiny.msa2d.point_coords"].clone(),
            t["tiny.msa2d.point_labels"].clone(),
        )),
        ..Default::default()
    };
    let (low, iou) = sam
        .decode(&emb, &prompts)
        .unwrap()
        .select(MaskSelection::Classes(1))
        .unwrap();
    assert_close(
        "msa2d low_res_logits",
        &low,
        &t["tiny.msa2d.low_res_logits"],
        1e-4,
    );
    assert_close("msa2d iou", &iou, &t["tiny.msa2d.iou"], 1e-4);
    let pred = bilinear(&low, 64, 64).unwrap();
    let loss = bce_with_logits(&pred, &t["tiny.msa2d.mask"], 2.0).unwrap();
    assert_close(
        "msa2d loss",
        &loss.reshape(1).unwrap(),
        &t["tiny.msa2d.loss"],
        1e-5,
    );

    let grads = loss.backward().unwrap();
    let vars = params.trainables();
    let checked = check_golden_grads(&t, "tiny.msa2d.grad.", &vars, &grads, check_grad);
    assert_eq!(
        checked, 32,
        "4 blocks x (Space, MLP) x (fc1, fc2) x (weight, bias)"
    );
}

#[test]
fn tinyvit_depth_branch_matches_reference_3d() {
    let ad = AdapterConfig {
        depth: true,
        ..AdapterConfig::default()
    };
    let (sam, _) = model(checkpoint(true), &ad, false);
    let t = load_cases("tinyvit_tiny_cases.safetensors");
    let depth = t["tiny.msa3d.depth"].to_vec1::<i64>().unwrap()[0] as usize;
    let emb = sam
        .image_encoder
        .forward_slices(&t["tiny.msa3d.slices"], Some(depth))
        .unwrap();
    assert_close(
        "msa3d embeddings",
        &emb,
        &t["tiny.msa3d.image_embeddings"],
        1e-4,
    );
}
