//! The SamPredictor path: resize, encode once, prompt in original-image pixels.

mod common;

use candle_core::{DType, Tensor};
use common::{assert_close, fixture, load_cases};
use msa::infer::Predictor;
use msa::io::prompt::UserPrompt;
use msa::model::SamConfig;
use msa::preprocess::resize_longest_side;
use msa::weights::load_sam;

fn tiny() -> msa::model::Sam {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    load_sam(
        &fixture("sam_tiny.pth"),
        Some(&cfg),
        None,
        &common::device(),
    )
    .unwrap()
    .sam
}

fn image(t: &std::collections::HashMap<String, Tensor>) -> image::RgbImage {
    let u8img = &t["predictor.image_uint8"];
    let (h, w, _) = u8img.dims3().unwrap();
    let raw = u8img.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    image::RgbImage::from_raw(w as u32, h as u32, raw).unwrap()
}

fn prompt() -> UserPrompt {
    UserPrompt {
        points: vec![(50.0, 30.0, 1)],
        bbox: Some([20.0, 10.0, 80.0, 60.0]),
    }
}

#[test]
fn resize_longest_side_matches_pil_bilinear() {
    let t = load_cases("sam_tiny_cases.safetensors");
    let resized = resize_longest_side(&image(&t), 128);
    assert_eq!((resized.height(), resized.width()), (96, 128));
    let golden = t["predictor.input_image"]
        .squeeze(0)
        .unwrap()
        .permute((1, 2, 0))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let ours = resized.as_raw();
    let off_by_more_than_one = ours
        .iter()
        .zip(&golden)
        .filter(|(a, b)| (**a as f32 - **b).abs() > 1.0)
        .count();
    let exact = ours
        .iter()
        .zip(&golden)
        .filter(|(a, b)| **a as f32 == **b)
        .count();
    assert_eq!(off_by_more_than_one, 0);
    assert!(
        exact as f64 >= 0.99 * golden.len() as f64,
        "{exact} of {} exact",
        golden.len()
    );
}

#[test]
fn model_outputs_match_given_the_resized_input() {
    let sam = tiny();
    let t = load_cases("sam_tiny_cases.safetensors");
    let mut p = Predictor::new(&sam);
    p.set_input(&t["predictor.input_image"], (75, 100)).unwrap();
    assert_close(
        "features",
        p.features().unwrap(),
        &t["predictor.features"],
        1e-4,
    );
    let pred = p.predict(&prompt(), true).unwrap();
    assert_close(
        "low_res",
        &pred.low_res_logits,
        &t["predictor.low_res_logits"],
        1e-4,
    );
    assert_close("scores", &pred.iou, &t["predictor.scores"], 1e-4);
}

#[test]
fn masks_from_the_raw_image_agree_with_sam_predictor() {
    let sam = tiny();
    let t = load_cases("sam_tiny_cases.safetensors");
    let mut p = Predictor::new(&sam);
    p.set_image(&image(&t)).unwrap();
    let pred = p.predict(&prompt(), true).unwrap();
    let ours = pred
        .masks_logits
        .gt(0.0)
        .unwrap()
        .to_dtype(DType::U8)
        .unwrap();
    let golden = &t["predictor.masks"];
    assert_eq!(ours.dims(), golden.dims());
    let same = ours
        .eq(golden)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(same >= 0.995, "only {same} of the pixels agree");
    // Both foreground and background occur, so agreement is not trivial.
    let fg = golden
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(fg > 0.01 && fg < 0.99, "golden foreground fraction {fg}");
}
