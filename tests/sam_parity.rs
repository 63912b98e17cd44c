//! Every tensor of the official-SAM golden cases, reproduced from the tiny checkpoint in both
//! file formats, and again with attention on `kernels::attention::flash`.

mod common;

use candle_core::Tensor;
use common::{assert_close, fixture, load_cases};
use msa::model::{MaskSelection, Prompts, Sam, SamConfig};
use msa::weights::{load_model, load_sam, LoadOptions};
use std::collections::HashMap;

const TOL: f32 = 1e-4;

fn tiny_config() -> SamConfig {
    SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap()
}

fn load(file: &str) -> Sam {
    let cfg = tiny_config();
    load_sam(&fixture(file), Some(&cfg), None, &common::device())
        .unwrap()
        .sam
}

/// The tiny model with every attention on the flash kernels.
fn load_flash(file: &str) -> Sam {
    let cfg = tiny_config();
    let opts = LoadOptions {
        config: Some(&cfg),
        flash_attention: Some(true),
        ..Default::default()
    };
    let sam = load_model(&fixture(file), &opts, &common::device())
        .unwrap()
        .sam;
    assert!(sam.image_encoder.vit().unwrap().blocks[0].attn.flash);
    sam
}

fn prompts_for(t: &HashMap<String, Tensor>, prefix: &str) -> Prompts {
    let get = |k: &str| t.get(&format!("{prefix}.{k}")).cloned();
    Prompts {
        points: get("point_coords").map(|p| (p, get("point_labels").unwrap())),
        boxes: get("boxes"),
        masks: get("mask_input"),
    }
}

fn check_model(sam: &Sam, src: &str) {
    let t = load_cases("sam_tiny_cases.safetensors");
    let x = sam.preprocess(&t["model.raw_image"]).unwrap();
    assert_close(
        &format!("{src} preprocessed"),
        &x,
        &t["model.preprocessed"],
        TOL,
    );
    let emb = sam.encode(&x).unwrap();
    assert_close(
        &format!("{src} image_embeddings"),
        &emb,
        &t["model.image_embeddings"],
        TOL,
    );
    assert_close(
        &format!("{src} dense_pe"),
        &sam.dense_pe,
        &t["model.dense_pe"],
        TOL,
    );
    let emb = &t["model.image_embeddings"];
    let (h, w) = (128, 96);
    for case in [
        "point1",
        "points2",
        "box",
        "point_box",
        "point_mask",
        "none",
    ] {
        let prefix = format!("case.{case}");
        let prompts = prompts_for(&t, &prefix);
        let (sparse, dense) = sam.prompt_encoder.forward(&prompts).unwrap();
        assert_close(
            &format!("{src} {case} sparse"),
            &sparse,
            &t[&format!("{prefix}.sparse")],
            TOL,
        );
        assert_close(
            &format!("{src} {case} dense"),
            &dense,
            &t[&format!("{prefix}.dense")],
            TOL,
        );
        let out = sam.decode(emb, &prompts).unwrap();
        for (tag, multimask) in [("multi", true), ("single", false)] {
            let (low, iou) = out.select(MaskSelection::Sam { multimask }).unwrap();
            let k = |n: &str| format!("{prefix}.{tag}.{n}");
            assert_close(
                &format!("{src} {case} {tag} low"),
                &low,
                &t[&k("low_res_logits")],
                TOL,
            );
            assert_close(&format!("{src} {case} {tag} iou"), &iou, &t[&k("iou")], TOL);
            let masks = sam.postprocess_masks(&low, (h, w), (h, w)).unwrap();
            assert_close(
                &format!("{src} {case} {tag} masks"),
                &masks,
                &t[&k("masks_logits")],
                TOL,
            );
        }
    }
}

#[test]
fn tiny_pth_reproduces_official_sam() {
    check_model(&load("sam_tiny.pth"), "pth");
}

#[test]
fn tiny_safetensors_reproduces_official_sam() {
    check_model(&load("sam_tiny.safetensors"), "safetensors");
}

#[test]
fn flash_attention_reproduces_official_sam() {
    check_model(&load_flash("sam_tiny.pth"), "pth on flash attention");
}

#[test]
fn several_prompts_share_one_embedding() {
    let sam = load("sam_tiny.pth");
    let t = load_cases("sam_tiny_cases.safetensors");
    let prompts = Prompts {
        points: Some((
            t["batch.point_coords"].clone(),
            t["batch.point_labels"].clone(),
        )),
        ..Default::default()
    };
    let out = sam.decode(&t["model.image_embeddings"], &prompts).unwrap();
    let (low, iou) = out.select(MaskSelection::Sam { multimask: true }).unwrap();
    assert_close("batch low", &low, &t["batch.low_res_logits"], TOL);
    assert_close("batch iou", &iou, &t["batch.iou"], TOL);
}

/// With autograd tracking the input, every layer takes its differentiable candle-ops path
/// instead of the fused CPU kernels; that path must match the golden numbers too.
#[test]
fn differentiable_path_matches_golden() {
    check_differentiable(&load("sam_tiny.pth"));
}

#[test]
fn differentiable_flash_attention_matches_golden() {
    check_differentiable(&load_flash("sam_tiny.pth"));
}

fn check_differentiable(sam: &Sam) {
    let t = load_cases("sam_tiny_cases.safetensors");
    let raw = candle_core::Var::from_tensor(&t["model.raw_image"]).unwrap();
    let emb = sam
        .encode(&sam.preprocess(raw.as_tensor()).unwrap())
        .unwrap();
    assert!(emb.track_op());
    assert_close(
        "tracked image_embeddings",
        &emb,
        &t["model.image_embeddings"],
        TOL,
    );
    let emb = candle_core::Var::from_tensor(&t["model.image_embeddings"]).unwrap();
    for case in ["point_box", "point_mask"] {
        let prefix = format!("case.{case}");
        let out = sam
            .decode(emb.as_tensor(), &prompts_for(&t, &prefix))
            .unwrap();
        let (low, iou) = out.select(MaskSelection::Sam { multimask: true }).unwrap();
        assert!(low.track_op());
        assert_close(
            "tracked low",
            &low,
            &t[&format!("{prefix}.multi.low_res_logits")],
            TOL,
        );
        assert_close("tracked iou", &iou, &t[&format!("{prefix}.multi.iou")], TOL);
    }
}

/// The per-image decoder context (first-layer image projections computed once) gives the
/// same outputs as the full decoder, for single and batched prompts.
#[test]
fn cached_decoder_context_matches_golden() {
    check_cached_context(&load("sam_tiny.pth"));
}

#[test]
fn cached_decoder_context_on_flash_attention_matches_golden() {
    check_cached_context(&load_flash("sam_tiny.pth"));
}

fn check_cached_context(sam: &Sam) {
    let t = load_cases("sam_tiny_cases.safetensors");
    let emb = &t["model.image_embeddings"];
    let ctx = sam.decoder_context(emb).unwrap();
    for case in [
        "point1",
        "points2",
        "box",
        "point_box",
        "point_mask",
        "none",
    ] {
        let prefix = format!("case.{case}");
        let out = sam
            .decode_cached(emb, &ctx, &prompts_for(&t, &prefix))
            .unwrap();
        let (low, iou) = out.select(MaskSelection::Sam { multimask: true }).unwrap();
        assert_close(
            &format!("cached {case} low"),
            &low,
            &t[&format!("{prefix}.multi.low_res_logits")],
            TOL,
        );
        assert_close(
            &format!("cached {case} iou"),
            &iou,
            &t[&format!("{prefix}.multi.iou")],
            TOL,
        );
    }
    let prompts = Prompts {
        points: Some((
            t["batch.point_coords"].clone(),
            t["batch.point_labels"].clone(),
        )),
        ..Default::default()
    };
    let out = sam.decode_cached(emb, &ctx, &prompts).unwrap();
    let (low, _) = out.select(MaskSelection::Sam { multimask: true }).unwrap();
    assert_close("cached batch low", &low, &t["batch.low_res_logits"], TOL);
}
