//! Adapter files: only trained tensors, metadata, refusal on the wrong base, and the
//! PyTorch MSA code's checkpoints.

mod common;

use candle_core::{Device, Tensor};
use common::{assert_close, fixture, load_cases};
use msa::model::{AdapterConfig, MaskSelection, Prompts, SamConfig};
use msa::weights::adapter_file::{self, AdapterMeta, FORMAT};
use msa::weights::{load_model, save_safetensors, Checkpoint, LoadOptions};
use std::collections::BTreeMap;
use std::path::Path;

fn tiny_cfg() -> SamConfig {
    SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap()
}

fn meta_for(base: &Path, ad: &AdapterConfig) -> AdapterMeta {
    AdapterMeta {
        format: FORMAT.into(),
        base_preset: "custom".into(),
        base_backbone: "vit".into(),
        preprocess: Some(msa::model::Preprocess::Sam),
        base_sha256: adapter_file::sha256_file(base).unwrap(),
        adapters: ad.clone(),
        image_size: 128,
        training: serde_json::json!({"epochs": 1}),
        tool_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The msa_tiny adapters, with the decoder adapters made non-zero so they matter.
fn trained_adapters() -> (BTreeMap<String, Tensor>, AdapterConfig) {
    let ad = AdapterConfig {
        decoder: true,
        depth: true,
        ..AdapterConfig::default()
    };
    let mut t: BTreeMap<String, Tensor> = Checkpoint::read(&fixture("msa_tiny.safetensors"))
        .unwrap()
        .tensors
        .into_iter()
        .filter(|(k, _)| msa::weights::is_adapter_key(k))
        .collect();
    let opts = LoadOptions {
        config: Some(&tiny_cfg()),
        adapters: Some(ad.clone()),
        seed: 5,
        ..Default::default()
    };
    let loaded = load_model(&fixture("sam_tiny.safetensors"), &opts, &Device::Cpu).unwrap();
    for (k, v) in loaded.params.trainables() {
        if k.starts_with("mask_decoder") {
            // Random, not uniform: a constant shift across channels vanishes in the LayerNorms.
            let bumped = (v.as_tensor() + v.as_tensor().randn_like(0.0, 0.05).unwrap()).unwrap();
            t.insert(k, bumped);
        }
    }
    (t, ad)
}

#[test]
fn adapters_round_trip_and_change_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("sam_tiny.safetensors");
    let (tensors, ad) = trained_adapters();
    let file = dir.path().join("adapters.safetensors");
    adapter_file::save(&file, &tensors, &meta_for(&base, &ad)).unwrap();
    let saved = Checkpoint::read(&file).unwrap().tensors;
    assert_eq!(saved.len(), tensors.len());
    assert!(
        saved.keys().all(|k| msa::weights::is_adapter_key(k)),
        "only trained tensors"
    );

    let cfg = tiny_cfg();
    let opts = LoadOptions {
        config: Some(&cfg),
        adapters_file: Some(&file),
        ..Default::default()
    };
    let loaded = load_model(&base, &opts, &Device::Cpu).unwrap();
    assert_eq!(loaded.sam.adapters, ad);
    assert_eq!(loaded.adapter_keys.len(), tensors.len());
    let t = load_cases("sam_tiny_cases.safetensors");
    let prompts = Prompts {
        points: Some((
            t["case.point1.point_coords"].clone(),
            t["case.point1.point_labels"].clone(),
        )),
        ..Default::default()
    };
    let out = loaded
        .sam
        .decode(&t["model.image_embeddings"], &prompts)
        .unwrap();
    let (low, _) = out.select(MaskSelection::Sam { multimask: false }).unwrap();
    let d = common::max_abs_diff(&low, &t["case.point1.single.low_res_logits"]);
    assert!(
        d > 1e-3,
        "trained decoder adapters must change the logits (diff {d})"
    );
}

/// A fully fine-tuned volume model (`msa train --3d --train all`) is a whole checkpoint that
/// carries depth adapters: loaded on its own it keeps the chunk it was trained with.
#[test]
fn a_fully_fine_tuned_file_keeps_its_adapter_settings() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("sam_tiny.safetensors");
    let (adapters, mut ad) = trained_adapters();
    ad.depth_chunk = 2;
    let mut tensors = Checkpoint::read(&base).unwrap().tensors;
    tensors.extend(adapters);
    let mut meta = meta_for(&base, &ad);
    meta.training = serde_json::json!({"train": "all", "three_d": true, "chunk": 2});
    let file = dir.path().join("tuned.safetensors");
    adapter_file::save(&file, &tensors, &meta).unwrap();

    let cfg = tiny_cfg();
    let opts = LoadOptions {
        config: Some(&cfg),
        ..Default::default()
    };
    let loaded = load_model(&file, &opts, &Device::Cpu).unwrap();
    assert_eq!(loaded.sam.adapters, ad);
    assert_eq!(loaded.sam.depth_chunk(), Some(2));

    // As adapters it would apply its depth adapters to the base and drop the rest.
    let err = adapter_file::load(&file).expect_err("refused as adapters");
    assert!(
        format!("{err}").contains(&format!("--checkpoint {}", file.display())),
        "{err}"
    );

    // Metadata that disagrees with the tensors is named, not trusted.
    meta.adapters.depth = false;
    adapter_file::save(&file, &tensors, &meta).unwrap();
    let err = match load_model(&file, &opts, &Device::Cpu) {
        Ok(_) => panic!("metadata without the depth adapters its tensors hold loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("tuned.safetensors") && err.contains("tensors hold"),
        "{err}"
    );
}

#[test]
fn adapters_for_another_base_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (tensors, ad) = trained_adapters();
    let file = dir.path().join("adapters.safetensors");
    let mut meta = meta_for(&fixture("sam_tiny.safetensors"), &ad);
    meta.base_sha256 = "0".repeat(64);
    adapter_file::save(&file, &tensors, &meta).unwrap();
    let cfg = tiny_cfg();
    let opts = LoadOptions {
        config: Some(&cfg),
        adapters_file: Some(&file),
        ..Default::default()
    };
    let err = match load_model(&fixture("sam_tiny.safetensors"), &opts, &Device::Cpu) {
        Ok(_) => panic!("adapters for another base loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("SHA-256") && err.contains("adapters.safetensors"),
        "{err}"
    );

    meta.base_sha256 = adapter_file::sha256_file(&fixture("sam_tiny.safetensors")).unwrap();
    meta.image_size = 256;
    adapter_file::save(&file, &tensors, &meta).unwrap();
    let err = match load_model(&fixture("sam_tiny.safetensors"), &opts, &Device::Cpu) {
        Ok(_) => panic!("adapters for another size loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("image size 256"), "{err}");
}

#[test]
fn pytorch_msa_adapter_checkpoint_applies() {
    // The reference's own base: msa_tiny without its adapter tensors.
    let dir = tempfile::tempdir().unwrap();
    let base: BTreeMap<String, Tensor> = Checkpoint::read(&fixture("msa_tiny.safetensors"))
        .unwrap()
        .tensors
        .into_iter()
        .filter(|(k, _)| !msa::weights::is_adapter_key(k))
        .collect();
    let base_path = dir.path().join("base.safetensors");
    save_safetensors(&base_path, &base, None).unwrap();
    let cfg = tiny_cfg();
    let file = fixture("msa_pytorch_adapters.pth");
    let opts = LoadOptions {
        config: Some(&cfg),
        adapters_file: Some(&file),
        ..Default::default()
    };
    let loaded = load_model(&base_path, &opts, &Device::Cpu).unwrap();
    assert!(
        loaded.sam.adapters.encoder && loaded.sam.adapters.depth && !loaded.sam.adapters.decoder
    );
    let t = load_cases("msa_tiny_cases.safetensors");
    let x = loaded.sam.preprocess(&t["msa2d.image"]).unwrap();
    let emb = loaded.sam.encode(&x).unwrap();
    assert_close(
        "embeddings with PyTorch MSA adapters",
        &emb,
        &t["msa2d.image_embeddings"],
        1e-4,
    );
}

#[test]
fn pytorch_msa_rel_table_names_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let renamed: BTreeMap<String, Tensor> = Checkpoint::read(&fixture("sam_tiny.safetensors"))
        .unwrap()
        .tensors
        .into_iter()
        .map(|(k, v)| {
            (
                k.replace("attn.rel_pos_h", "attn.rel_h")
                    .replace("attn.rel_pos_w", "attn.rel_w"),
                v,
            )
        })
        .collect();
    assert!(renamed.keys().any(|k| k.ends_with("attn.rel_h")));
    let path = dir.path().join("renamed.safetensors");
    save_safetensors(&path, &renamed, None).unwrap();
    let loaded = msa::weights::load_sam(&path, Some(&tiny_cfg()), None, &Device::Cpu).unwrap();
    let t = load_cases("sam_tiny_cases.safetensors");
    let emb = loaded.sam.encode(&t["model.preprocessed"]).unwrap();
    assert_close("embeddings", &emb, &t["model.image_embeddings"], 1e-4);
}

#[cfg(unix)]
#[test]
fn written_safetensors_are_ordinary_readable_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "x".to_string(),
        Tensor::new(&[0f32, 1., 2.], &Device::Cpu).unwrap(),
    );
    save_safetensors(&path, &tensors, None).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "mode {mode:o}");
}
