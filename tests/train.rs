//! Training end to end on the tiny model and generated data: the run folder, resume
//! equivalence, and adapters that beat the frozen model.

mod common;

use candle_core::Device;
use common::fixture;
use msa::data::layout::{discover, DatasetKind};
use msa::data::prompts::PromptKind;
use msa::data::synthetic::write_folder_dataset;
use msa::eval::evaluate::{evaluate, summarize, PromptSource};
use msa::model::SamConfig;
use msa::train::config::TrainConfig;
use msa::weights::{load_model, Checkpoint, LoadOptions};
use std::path::Path;

fn config(data: &Path, out: &Path, epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::new(fixture("sam_tiny.safetensors"), data.to_path_buf(), out.to_path_buf());
    c.config = Some(fixture("sam_tiny.json"));
    c.epochs = epochs;
    c.batch_size = 4;
    c.lr = 2e-3;
    c.seed = 3;
    c.samples = 2;
    c
}

fn val_dice(adapters: Option<&Path>, data: &Path) -> f64 {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let opts = LoadOptions { config: Some(&cfg), adapters_file: adapters, ..Default::default() };
    let loaded = load_model(&fixture("sam_tiny.safetensors"), &opts, &Device::Cpu).unwrap();
    let splits = discover(DatasetKind::Folder, data, 3, 0.2).unwrap();
    let source = PromptSource::Drawn { kind: PromptKind::Click, seed: 3 };
    let r = evaluate(&loaded.sam, &splits.val, &splits.classes, &source, None, |_| {}).unwrap();
    summarize(&r).dice.mean
}

#[test]
fn adapters_learn_and_the_run_folder_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_folder_dataset(&data, 40, (96, 72), 11).unwrap();
    let out = dir.path().join("run");
    let result = msa::train::run::run(&config(&data, &out, 12), &Device::Cpu).unwrap();
    for f in [
        "config.toml", "log.jsonl", "metrics.csv", "split.json", "adapters_best.safetensors",
        "adapters_last.safetensors", "state_last.safetensors", "curves.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(out.join("samples/epoch_012").read_dir().unwrap().count() >= 2);
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 13, "{metrics}");
    let frozen = val_dice(None, &data);
    let adapted = val_dice(Some(&out.join("adapters_best.safetensors")), &data);
    eprintln!("validation Dice: frozen {frozen:.4}, adapted {adapted:.4}, history {:?}", result.history);
    assert!(adapted > frozen + 0.2, "adapted {adapted:.4} vs frozen {frozen:.4}");
}

#[test]
fn resuming_after_an_interruption_reaches_the_same_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_folder_dataset(&data, 12, (64, 48), 5).unwrap();
    let straight = dir.path().join("straight");
    msa::train::run::run(&config(&data, &straight, 3), &Device::Cpu).unwrap();
    let split = dir.path().join("split");
    msa::train::run::run(&config(&data, &split, 1), &Device::Cpu).unwrap();
    msa::train::run::set_resume(true);
    let resumed = msa::train::run::run(&config(&data, &split, 3), &Device::Cpu);
    msa::train::run::set_resume(false);
    resumed.unwrap();
    let a = Checkpoint::read(&straight.join("adapters_last.safetensors")).unwrap().tensors;
    let b = Checkpoint::read(&split.join("adapters_last.safetensors")).unwrap().tensors;
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert_eq!(common::max_abs_diff(v, &b[k]), 0.0, "{k}");
    }
    let ma = std::fs::read_to_string(straight.join("metrics.csv")).unwrap();
    let mb = std::fs::read_to_string(split.join("metrics.csv")).unwrap();
    assert_eq!(ma, mb);
}
