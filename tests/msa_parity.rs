//! The adapted model against the MSA reference: encoder outputs (2D and 3D), the
//! MSA-convention decoder, the BCE loss, and the gradient of every adapter parameter; all of
//! it also with attention on `kernels::attention::flash`, and on `kernels::attention::tensor_cores`.

mod common;

use candle_core::{DType, Tensor};
use common::{assert_close, check_golden_grads, device, fixture, load_cases};
use msa::model::{
    AdapterConfig, AttentionKernel, MaskSelection, ModelOptions, Prompts, Sam, SamConfig,
};
use msa::resize::bilinear;
use msa::train::loss::bce_with_logits;
use msa::weights::{Checkpoint, Params, Source};

fn adapted(train: bool, flash: bool) -> (Sam, Params) {
    adapted_in(train, flash, DType::F32)
}

/// The encoder computing in `dtype`: f64 on the CPU takes the device-generic ops that GPUs
/// run (`model::frozen`), not the CPU's f32 kernels.
fn adapted_in(train: bool, flash: bool, dtype: DType) -> (Sam, Params) {
    adapted_with(train, (flash, false), dtype)
}

/// `adapted_in`, with the attention on (`kernels::attention::flash`, `kernels::attention::tensor_cores`).
fn adapted_with(train: bool, (flash, tensor_cores): (bool, bool), dtype: DType) -> (Sam, Params) {
    let cfg = SamConfig::from_json_file(&fixture("msa_tiny.json")).unwrap();
    let ckpt = Checkpoint::read(&fixture("msa_tiny.safetensors")).unwrap();
    let params = Params::with_options(Source::from(ckpt), &device(), train, 0);
    let attention = match (flash, tensor_cores) {
        (true, _) => AttentionKernel::Flash,
        (false, true) => AttentionKernel::TensorCores,
        (false, false) => AttentionKernel::Standard,
    };
    let opts = ModelOptions {
        attention,
        encoder_dtype: dtype,
    };
    let ad = AdapterConfig {
        depth: true,
        ..AdapterConfig::default()
    };
    let sam = Sam::load_with(&params, &cfg, &ad, &opts).unwrap();
    assert!(
        params.unused_keys().is_empty(),
        "{:?}",
        params.unused_keys()
    );
    (sam, params)
}

#[test]
fn adapted_forward_loss_and_adapter_gradients_match_reference() {
    check_adapted(false, DType::F32);
}

#[test]
fn adapter_gradients_on_flash_attention_match_reference() {
    check_adapted(true, DType::F32);
}

#[test]
fn adapter_gradients_through_the_device_generic_ops_match_reference() {
    // A GPU takes these ops in f32 already, in the test above.
    if !device().is_cpu() {
        return;
    }
    check_adapted(false, DType::F64);
}

/// The encoder's attention through `kernels::attention::tensor_cores`: on the CPU its f64 reference loops,
/// which check the model's wiring of the op (heads, bias terms, gradients back to the
/// adapters). On a GPU the kernels take bf16 and f16 only: tests/precision.rs.
#[test]
fn adapter_gradients_through_the_fused_attention_match_reference() {
    if !device().is_cpu() {
        return;
    }
    check_adapted_with(false, true, DType::F64);
}

fn check_adapted(flash: bool, dtype: DType) {
    check_adapted_with(flash, false, dtype)
}

fn check_adapted_with(flash: bool, fused: bool, dtype: DType) {
    let (sam, params) = adapted_with(true, (flash, fused), dtype);
    let t = load_cases("msa_tiny_cases.safetensors");
    let emb = sam
        .encode(&sam.preprocess(&t["msa2d.image"]).unwrap())
        .unwrap();
    assert_close("msa2d embeddings", &emb, &t["msa2d.image_embeddings"], 1e-4);

    let prompts = Prompts {
        points: Some((
            t["msa2d.point_coords"].clone(),
            t["msa2d.point_labels"].clone(),
        )),
        ..Default::default()
    };
    let out = sam.decode(&emb, &prompts).unwrap();
    let (low, iou) = out.select(MaskSelection::Classes(1)).unwrap();
    assert_close(
        "msa2d low_res_logits",
        &low,
        &t["msa2d.low_res_logits"],
        1e-4,
    );
    assert_close("msa2d iou", &iou, &t["msa2d.iou"], 1e-4);

    let pred = bilinear(&low, 128, 128).unwrap();
    let loss = bce_with_logits(&pred, &t["msa2d.mask"], 2.0).unwrap();
    assert_close(
        "msa2d loss",
        &loss.reshape(1).unwrap(),
        &t["msa2d.loss"],
        1e-5,
    );

    let grads = loss.backward().unwrap();
    let vars = params.trainables();
    let checked = check_golden_grads(&t, "msa2d.grad.", &vars, &grads, check_grad);
    assert_eq!(
        checked, 32,
        "4 blocks x (Space, MLP) x (fc1, fc2) x (weight, bias)"
    );
    // Frozen SAM tensors get no gradient at all.
    let qkv = &sam.image_encoder.vit().unwrap().blocks[0].attn.qkv.weight;
    assert!(grads.get(qkv).is_none());
    // Decoder adapters (zero up-projections) are in the graph and do get gradients.
    let up = &vars["mask_decoder.transformer.layers.0.Image_Adapter.D_fc2.weight"];
    assert!(grads.get(up.as_tensor()).is_some());
}

/// |ours - golden| <= 1e-6 + 1e-4 |golden|, elementwise.
fn check_grad(key: &str, ours: &Tensor, golden: &Tensor) {
    assert_eq!(ours.dims(), golden.dims(), "{key}");
    let o: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
    let g: Vec<f32> = golden.flatten_all().unwrap().to_vec1().unwrap();
    for (i, (a, b)) in o.iter().zip(&g).enumerate() {
        let tol = 1e-6 + 1e-4 * b.abs();
        assert!((a - b).abs() <= tol, "{key}[{i}]: ours {a:e} golden {b:e}");
    }
    assert!(
        g.iter().any(|v| v.abs() > 1e-6),
        "{key}: golden gradient is all zero"
    );
}

#[test]
fn depth_branch_matches_reference_3d() {
    let t = load_cases("msa_tiny_cases.safetensors");
    for flash in [false, true] {
        let (sam, _) = adapted(false, flash);
        let x = sam.preprocess(&t["msa3d.slices"]).unwrap();
        let emb = sam.image_encoder.forward_slices(&x, Some(6)).unwrap();
        let what = format!("msa3d embeddings (flash attention: {flash})");
        assert_close(&what, &emb, &t["msa3d.image_embeddings"], 1e-4);
    }
}

#[test]
fn zero_initialised_adapters_compute_frozen_sam() {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let ckpt = Checkpoint::read(&fixture("sam_tiny.safetensors")).unwrap();
    let params = Params::with_options(Source::from(ckpt), &device(), false, 1);
    let ad = AdapterConfig {
        lora_rank: 4,
        ..AdapterConfig::default()
    };
    let sam = Sam::load_adapted(&params, &cfg, &ad).unwrap();
    let t = load_cases("sam_tiny_cases.safetensors");
    let emb = sam.encode(&t["model.preprocessed"]).unwrap();
    assert_close("embeddings", &emb, &t["model.image_embeddings"], 1e-4);
    let prompts = Prompts {
        points: Some((
            t["case.point_box.point_coords"].clone(),
            t["case.point_box.point_labels"].clone(),
        )),
        boxes: Some(t["case.point_box.boxes"].clone()),
        masks: None,
    };
    let out = sam.decode(&t["model.image_embeddings"], &prompts).unwrap();
    let (low, _) = out.select(MaskSelection::Sam { multimask: true }).unwrap();
    assert_close("low", &low, &t["case.point_box.multi.low_res_logits"], 1e-4);
    // Encoder: 4 blocks x (Space 4 + MLP 4 + LoRA 2); decoder: 2 layers x (HyP 10 + MLP 4 + Image 4).
    assert_eq!(params.trainables().len(), 4 * 10 + 2 * 18);
}
