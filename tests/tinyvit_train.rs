//! Training with the TinyViT backbone: every `--train` mode runs on the tiny TinyViT model
//! and writes adapters that load back; adapter files know their base and are refused on
//! another; under full fine-tuning the folded BatchNorm weights follow the optimizer.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, max_abs_diff};
use msa::data::prompts::PromptKind;
use msa::data::synthetic::write_folder_dataset;
use msa::model::{AdapterConfig, Sam, SamConfig};
use msa::train::config::{TrainConfig, TrainMode};
use msa::weights::{
    is_adapter_key, load_model, save_safetensors, Checkpoint, LoadOptions, Params, Source,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn config() -> SamConfig {
    SamConfig::from_json_file(&fixture("tinyvit_tiny.json")).unwrap()
}

/// The tiny TinyViT without its adapter tensors, as a base checkpoint.
fn base(dir: &Path) -> PathBuf {
    let mut ckpt = Checkpoint::read(&fixture("tinyvit_tiny.safetensors")).unwrap();
    ckpt.tensors.retain(|k, _| !is_adapter_key(k));
    let tensors: BTreeMap<String, Tensor> = ckpt
        .tensors
        .into_iter()
        .map(|(k, v)| {
            let v = if v.dtype() == candle_core::DType::F16 {
                v.to_dtype(candle_core::DType::F32).unwrap()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    let path = dir.join("tinyvit_base.safetensors");
    save_safetensors(&path, &tensors, None).unwrap();
    path
}

fn train(base: &Path, data: &Path, out: &Path, mode: TrainMode) {
    let mut c = TrainConfig::new(base.to_path_buf(), data.to_path_buf(), out.to_path_buf());
    // These tests score clicks; they train on what they score.
    c.prompt = PromptKind::Click;
    c.model_config = Some(fixture("tinyvit_tiny.json"));
    c.train = mode;
    c.epochs = 1;
    c.batch_size = 2;
    c.seed = 1;
    c.samples = 1;
    msa::train::run::run(&c, &Device::Cpu, false).unwrap();
}

fn with_adapters(base: &Path, adapters: &Path) -> anyhow::Result<msa::weights::Loaded> {
    let cfg = config();
    let opts = LoadOptions {
        config: Some(&cfg),
        adapters_file: Some(adapters),
        ..Default::default()
    };
    load_model(base, &opts, &Device::Cpu)
}

#[test]
fn every_train_mode_runs_on_tinyvit_and_its_file_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let base = base(dir.path());
    let data = dir.path().join("data");
    write_folder_dataset(&data, 6, (80, 64), 2).unwrap();
    for mode in [
        TrainMode::Adapters,
        TrainMode::Decoder,
        TrainMode::Lora,
        TrainMode::All,
    ] {
        let out = dir.path().join(format!("{mode:?}"));
        train(&base, &data, &out, mode);
        let file = out.join("adapters_last.safetensors");
        let keys = Checkpoint::read(&file).unwrap().tensors;
        let has = |s: &str| keys.keys().any(|k| k.contains(s));
        match mode {
            TrainMode::Adapters => {
                assert!(has("layers.1.blocks.0.Space_Adapter") && has("Hyper_Adapter"))
            }
            TrainMode::Decoder => assert!(has("Hyper_Adapter") && !has("image_encoder")),
            TrainMode::Lora => assert!(has("attn.lora_a")),
            TrainMode::All => assert!(has("bn.running_var") && has("attention_biases")),
        }
        if mode == TrainMode::All {
            // A fully fine-tuned file is a checkpoint of its own.
            let cfg = config();
            let opts = LoadOptions {
                config: Some(&cfg),
                ..Default::default()
            };
            load_model(&file, &opts, &Device::Cpu).unwrap();
        } else {
            let loaded = with_adapters(&base, &file).unwrap();
            assert!(loaded.adapter_params > 0, "{mode:?}");
        }
    }
}

#[test]
fn tinyvit_adapters_are_refused_on_another_base() {
    let dir = tempfile::tempdir().unwrap();
    let base = base(dir.path());
    let data = dir.path().join("data");
    write_folder_dataset(&data, 4, (80, 64), 3).unwrap();
    let out = dir.path().join("run");
    train(&base, &data, &out, TrainMode::Decoder);
    let file = out.join("adapters_last.safetensors");
    // Same architecture, other weights: the SHA-256 tells them apart.
    let mut other = Checkpoint::read(&base).unwrap().tensors;
    let key = "mask_decoder.iou_token.weight";
    other.insert(key.into(), (other[key].clone() + 1.0).unwrap());
    let other_path = dir.path().join("other.safetensors");
    save_safetensors(&other_path, &other, None).unwrap();
    let err = format!("{:#}", with_adapters(&other_path, &file).err().unwrap());
    assert!(
        err.contains("SHA-256") && err.contains("other.safetensors"),
        "{err}"
    );
    // Another architecture (a ViT SAM): refused by its preset.
    let vit = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let opts = LoadOptions {
        config: Some(&vit),
        adapters_file: Some(&file),
        ..Default::default()
    };
    let err = format!(
        "{:#}",
        load_model(&fixture("sam_tiny.safetensors"), &opts, &Device::Cpu)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("were trained on a tiny_vit base") && err.contains("is a vit"),
        "{err}"
    );
}

/// Conv2d_BN layers are folded into one conv, and the decoder's transposed convs are
/// re-laid out, at load time. When those weights train, the model must compute with their
/// current values: after an in-place change of every trainable tensor, the model built
/// before the change and one built from the changed tensors agree.
#[test]
fn full_fine_tuning_computes_with_the_current_weights() {
    check_current_weights("tinyvit_tiny.safetensors", &config());
    // The ViT has only the decoder's re-laid-out transposed convs.
    let vit = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    check_current_weights("sam_tiny.safetensors", &vit);
}

fn check_current_weights(file: &str, cfg: &SamConfig) {
    let mut ckpt = Checkpoint::read(&fixture(file)).unwrap();
    ckpt.tensors.retain(|k, _| !is_adapter_key(k));
    let params = Params::train_all(Source::from(ckpt), &Device::Cpu, 0);
    let sam = Sam::load_adapted(&params, cfg, &AdapterConfig::none()).unwrap();
    let s = cfg.img_size;
    let x = Tensor::rand(0f32, 1f32, (1, 3, s, s), &Device::Cpu).unwrap();
    let prompts = msa::model::Prompts {
        boxes: Some(Tensor::new(&[[10f32, 8., 50., 40.]], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let before = sam
        .decode(&sam.encode(&x).unwrap(), &prompts)
        .unwrap()
        .low_res_logits;
    let mut changed = BTreeMap::new();
    for (k, var) in params.trainables() {
        let t = var.as_tensor();
        let bumped = (t.affine(1.02, 0.01).unwrap()).detach();
        var.set(&bumped).unwrap();
        changed.insert(k, bumped);
    }
    changed.extend(params.buffers());
    let after = sam
        .decode(&sam.encode(&x).unwrap(), &prompts)
        .unwrap()
        .low_res_logits;
    let fresh_params = Params::new(
        Source::from(Checkpoint {
            path: "changed".into(),
            tensors: changed,
        }),
        &Device::Cpu,
    );
    let fresh = Sam::load(&fresh_params, cfg).unwrap();
    let expected = fresh
        .decode(&fresh.encode(&x).unwrap(), &prompts)
        .unwrap()
        .low_res_logits;
    assert!(
        max_abs_diff(&before, &after) > 1e-3,
        "the change had no effect"
    );
    let d = max_abs_diff(&after, &expected);
    assert!(d < 1e-3, "{file}: the model kept stale weights: {d:e}");
}

/// MobileSAM has no package to fetch here: a random model built from its preset's key set
/// is recognised by name from its shapes and runs at 1024 px with SAM's preprocessing.
#[test]
fn mobile_sam_preset_is_detected_and_runs() {
    let cfg = SamConfig::preset("mobile_sam").unwrap();
    let shapes = msa::weights::expected_keys(&cfg).unwrap();
    let tensors: BTreeMap<String, Tensor> = shapes
        .iter()
        .map(|(k, s)| {
            // Positive values keep BatchNorm's running variance valid.
            (
                k.clone(),
                Tensor::rand(0.5f32, 1.5f32, s.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mobile_sam.safetensors");
    save_safetensors(&path, &tensors, None).unwrap();
    let loaded = load_model(&path, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(loaded.preset, "mobile_sam");
    assert_eq!(loaded.sam.config.img_size, 1024);
    assert_eq!(loaded.sam.config.preprocess, msa::model::Preprocess::Sam);
    let x = Tensor::zeros((1, 3, 1024, 1024), candle_core::DType::F32, &Device::Cpu).unwrap();
    let emb = loaded.sam.encode(&x).unwrap();
    assert_eq!(emb.dims(), &[1, 256, 64, 64]);
}
