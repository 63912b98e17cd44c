//! Preset key sets, checkpoint wrappers, and the errors a bad file gets.

mod common;

use candle_core::{DType, Device, Tensor};
use common::fixture;
use msa::model::SamConfig;
use msa::weights::{expected_keys, load_sam, save_safetensors, Checkpoint};
use std::collections::BTreeMap;
use std::path::Path;

fn golden_keys(preset: &str) -> BTreeMap<String, Vec<usize>> {
    let text = std::fs::read_to_string(fixture(&format!("sam_keys_{preset}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn presets_have_exactly_the_official_keys_and_shapes() {
    for preset in ["vit_b", "vit_l", "vit_h"] {
        let ours = expected_keys(&SamConfig::preset(preset).unwrap()).unwrap();
        let golden = golden_keys(preset);
        let missing: Vec<_> = golden.keys().filter(|k| !ours.contains_key(*k)).collect();
        let extra: Vec<_> = ours.keys().filter(|k| !golden.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{preset}: missing {missing:?}, extra {extra:?}"
        );
        for (k, shape) in &golden {
            assert_eq!(&ours[k], shape, "{preset}: {k}");
        }
    }
}

fn tiny_config() -> SamConfig {
    SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap()
}

fn tiny_tensors() -> BTreeMap<String, Tensor> {
    Checkpoint::read(&fixture("sam_tiny.safetensors"))
        .unwrap()
        .tensors
}

fn load_err(path: &Path, cfg: Option<&SamConfig>) -> String {
    match load_sam(path, cfg, None, &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn write(dir: &Path, name: &str, tensors: &BTreeMap<String, Tensor>) -> std::path::PathBuf {
    let path = dir.join(name);
    save_safetensors(&path, tensors, None).unwrap();
    path
}

#[test]
fn wrong_shape_names_file_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tiny_tensors();
    let key = "mask_decoder.iou_token.weight";
    t.insert(
        key.into(),
        Tensor::zeros((1, 31), DType::F32, &Device::Cpu).unwrap(),
    );
    let path = write(dir.path(), "bad_shape.safetensors", &t);
    let err = load_err(&path, Some(&tiny_config()));
    for needle in ["bad_shape.safetensors", key, "[1, 32]", "[1, 31]"] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
}

#[test]
fn missing_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tiny_tensors();
    let key = "image_encoder.blocks.2.attn.proj.weight";
    t.remove(key);
    let path = write(dir.path(), "missing.safetensors", &t);
    let err = load_err(&path, Some(&tiny_config()));
    for needle in ["missing.safetensors", key, "missing key", "[64, 64]"] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
}

#[test]
fn unexpected_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tiny_tensors();
    t.insert(
        "image_encoder.blocks.9.norm1.weight".into(),
        Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap(),
    );
    let path = write(dir.path(), "extra.safetensors", &t);
    let err = load_err(&path, Some(&tiny_config()));
    assert!(
        err.contains("extra.safetensors") && err.contains("blocks.9.norm1.weight"),
        "{err}"
    );
}

#[test]
fn truncated_files_are_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for src in ["sam_tiny.pth", "sam_tiny.safetensors"] {
        let bytes = std::fs::read(fixture(src)).unwrap();
        let path = dir.path().join(format!("cut_{src}"));
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_err(&path, Some(&tiny_config()));
        assert!(err.contains(&format!("cut_{src}")), "{err}");
    }
}

#[test]
fn garbage_and_missing_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "this is not a checkpoint at all").unwrap();
    let err = load_err(&path, None);
    assert!(
        err.contains("notes.txt") && err.contains("neither"),
        "{err}"
    );
    let err = load_err(&dir.path().join("absent.pth"), None);
    assert!(err.contains("absent.pth"), "{err}");
}

#[test]
fn custom_architecture_without_config_asks_for_one() {
    let err = load_err(&fixture("sam_tiny.pth"), None);
    assert!(
        err.contains("--model-config") && err.contains("embed_dim 64"),
        "{err}"
    );
}

#[test]
fn wrong_config_reports_the_first_mismatch() {
    let mut cfg = tiny_config();
    let msa::model::EncoderConfig::Vit(vit) = &mut cfg.encoder else {
        panic!("sam_tiny is a ViT");
    };
    vit.embed_dim = 96;
    vit.num_heads = 4;
    let err = load_err(&fixture("sam_tiny.pth"), Some(&cfg));
    assert!(
        err.contains("sam_tiny.pth") && err.contains("expected shape"),
        "{err}"
    );
}

#[test]
fn wrapped_and_prefixed_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    let prefixed: BTreeMap<String, Tensor> = tiny_tensors()
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    let path = write(dir.path(), "prefixed.safetensors", &prefixed);
    let loaded = load_sam(&path, Some(&tiny_config()), None, &Device::Cpu).unwrap();
    assert_eq!(loaded.preset, "custom");
}

#[test]
fn f16_tensors_are_widened() {
    let dir = tempfile::tempdir().unwrap();
    let half: BTreeMap<String, Tensor> = tiny_tensors()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
    let path = write(dir.path(), "half.safetensors", &half);
    let loaded = load_sam(&path, Some(&tiny_config()), None, &Device::Cpu).unwrap();
    let w = &loaded.sam.mask_decoder.iou_token;
    assert_eq!(w.dtype(), DType::F32);
}

#[test]
fn convert_keeps_keys_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.safetensors");
    let n = msa::weights::convert(&fixture("sam_tiny.pth"), &out).unwrap();
    let a = Checkpoint::read(&fixture("sam_tiny.pth")).unwrap().tensors;
    let b = Checkpoint::read(&out).unwrap().tensors;
    assert_eq!(n, a.len());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert_eq!(common::max_abs_diff(v, &b[k]), 0.0, "{k}");
    }
}

fn read(name: &str) -> BTreeMap<String, Tensor> {
    Checkpoint::read(&fixture(name)).unwrap().tensors
}

#[test]
fn pth_wrappers_and_prefixes_are_unwrapped() {
    for name in [
        "wrapped_model.pth",
        "wrapped_state_dict.pth",
        "flat_f16.pth",
    ] {
        let t = read(name);
        let keys: Vec<_> = t.keys().cloned().collect();
        assert_eq!(
            keys,
            ["image_encoder.pos_embed", "mask_decoder.iou_token.weight"],
            "{name}"
        );
        assert_eq!(t["image_encoder.pos_embed"].dims(), [1, 2, 2, 4], "{name}");
    }
    let f16 = &read("flat_f16.pth")["mask_decoder.iou_token.weight"];
    assert_eq!(f16.dtype(), DType::F16);
    let f32 = &read("wrapped_model.pth")["mask_decoder.iou_token.weight"];
    assert!(common::max_abs_diff(f16, f32) < 1e-2);
}

#[test]
fn pth_views_with_storage_offsets_read_their_own_elements() {
    let t = &read("offset_view.pth")["sliced"];
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(v, (6..18).map(|x| x as f32).collect::<Vec<_>>());
}

#[test]
fn full_fine_tuning_trains_every_parameter_but_not_the_pe_buffer() {
    let opts = msa::weights::LoadOptions {
        config: Some(&tiny_config()),
        train_all: true,
        ..Default::default()
    };
    let loaded =
        msa::weights::load_model(&fixture("sam_tiny.safetensors"), &opts, &Device::Cpu).unwrap();
    let buffer = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix";
    let mut parameters: Vec<String> = tiny_tensors().into_keys().collect();
    parameters.retain(|k| k != buffer);
    let trainable: Vec<String> = loaded.params.trainables().into_keys().collect();
    // PyTorch registers the Fourier matrix as a buffer: full fine-tuning leaves it alone.
    assert_eq!(trainable, parameters);
}
