//! Training end to end on the tiny model and generated data: the run folder, resume
//! equivalence, and adapters that beat the frozen model.

mod common;

use candle_core::Device;
use common::fixture;
use msa::data::layout::{discover, DatasetKind};
use msa::data::prompts::PromptKind;
use msa::data::synthetic::{
    write_folder_dataset, write_refuge_dataset, write_styled_dataset, Style,
};
use msa::eval::evaluate::{evaluate, summarize, PromptSource};
use msa::model::SamConfig;
use msa::train::config::{TrainConfig, TrainMode};
use msa::weights::{load_model, Checkpoint, LoadOptions};
use std::path::Path;

fn config(base: &Path, data: &Path, out: &Path, epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::new(base.to_path_buf(), data.to_path_buf(), out.to_path_buf());
    // These tests score clicks; they train on what they score.
    c.prompt = PromptKind::Click;
    c.model_config = Some(fixture("sam_tiny.json"));
    c.epochs = epochs;
    c.batch_size = 4;
    c.lr = 3e-3;
    c.seed = 3;
    c.samples = 2;
    c
}

fn val_summary(
    base: &Path,
    adapters: Option<&Path>,
    data: &Path,
    kind: DatasetKind,
) -> msa::eval::evaluate::Summary {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let opts = LoadOptions {
        config: Some(&cfg),
        adapters_file: adapters,
        ..Default::default()
    };
    let loaded = load_model(base, &opts, &Device::Cpu).unwrap();
    let splits = discover(kind, data, 3, 0.2).unwrap();
    let source = PromptSource::Drawn {
        kind: PromptKind::Click,
        seed: 3,
    };
    let r = evaluate(
        &loaded.sam,
        &splits.val,
        &splits.classes,
        &source,
        None,
        None,
        |_| {},
    )
    .unwrap();
    summarize(&r)
}

fn val_dice(base: &Path, adapters: Option<&Path>, data: &Path) -> f64 {
    val_summary(base, adapters, data, DatasetKind::Folder)
        .dice
        .mean
}

/// The tiny SAM's random weights bound its logits near zero, so it cannot stand in for a
/// pretrained SAM as it is: it is first fully fine-tuned on one image style (a "pretrained
/// base"), and the adapters then move it to another style, as MSA moves SAM to medical data.
fn pretrained_base(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("base_data");
    write_styled_dataset(&data, 40, (96, 72), 11, Style::Dermoscopy).unwrap();
    let mut c = config(
        &fixture("sam_tiny.safetensors"),
        &data,
        &dir.join("base_run"),
        14,
    );
    c.train = TrainMode::All;
    c.lr = 1e-3;
    c.val_every = 100;
    msa::train::run::run(&c, &Device::Cpu, false).unwrap();
    dir.join("base_run/adapters_last.safetensors")
}

#[test]
fn adapters_learn_and_the_run_folder_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let base = pretrained_base(dir.path());
    let data = dir.path().join("data");
    write_styled_dataset(&data, 40, (96, 72), 12, Style::Ultrasound).unwrap();
    let out = dir.path().join("run");
    let mut cfg = config(&base, &data, &out, 20);
    cfg.lr = 5e-3;
    cfg.val_every = 5;
    let result = msa::train::run::run(&cfg, &Device::Cpu, false).unwrap();
    for f in [
        "config.toml",
        "log.jsonl",
        "metrics.csv",
        "split.json",
        "adapters_best.safetensors",
        "adapters_last.safetensors",
        "state_last.safetensors",
        "curves.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(out.join("samples/epoch_020").read_dir().unwrap().count() >= 2);
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 21, "{metrics}");
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 20);
    for e in &epochs {
        let peak = e["peak_memory_mib"].as_f64().unwrap_or(0.0);
        assert!(peak > 1.0, "epoch line without its peak memory: {e}");
    }
    let frozen = val_dice(&base, None, &data);
    let adapted = val_dice(&base, Some(&out.join("adapters_best.safetensors")), &data);
    eprintln!(
        "validation Dice: frozen {frozen:.4}, adapted {adapted:.4}, history {:?}",
        result.history
    );
    assert!(
        adapted > frozen + 0.4,
        "adapted {adapted:.4} vs frozen {frozen:.4}"
    );
}

#[test]
fn resuming_after_an_interruption_reaches_the_same_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_folder_dataset(&data, 12, (64, 48), 5).unwrap();
    let base = fixture("sam_tiny.safetensors");
    let straight = dir.path().join("straight");
    msa::train::run::run(&config(&base, &data, &straight, 3), &Device::Cpu, false).unwrap();
    let split = dir.path().join("split");
    msa::train::run::run(&config(&base, &data, &split, 1), &Device::Cpu, false).unwrap();
    msa::train::run::run(&config(&base, &data, &split, 3), &Device::Cpu, true).unwrap();
    let a = Checkpoint::read(&straight.join("adapters_last.safetensors"))
        .unwrap()
        .tensors;
    let b = Checkpoint::read(&split.join("adapters_last.safetensors"))
        .unwrap()
        .tensors;
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert_eq!(common::max_abs_diff(v, &b[k]), 0.0, "{k}");
    }
    let ma = std::fs::read_to_string(straight.join("metrics.csv")).unwrap();
    let mb = std::fs::read_to_string(split.join("metrics.csv")).unwrap();
    assert_eq!(ma, mb);
}

/// `--checkpoint-blocks` changes what is kept in memory, not what is learnt.
#[test]
fn recomputed_encoder_blocks_train_to_the_same_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_folder_dataset(&data, 8, (64, 48), 6).unwrap();
    let base = fixture("sam_tiny.safetensors");
    let adapters = |checkpoint_blocks: bool| {
        let out = dir.path().join(format!("run_{checkpoint_blocks}"));
        let mut c = config(&base, &data, &out, 2);
        c.checkpoint_blocks = checkpoint_blocks;
        msa::train::run::run(&c, &Device::Cpu, false).unwrap();
        let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
        assert!(saved.contains(&format!("checkpoint_blocks = {checkpoint_blocks}")));
        Checkpoint::read(&out.join("adapters_last.safetensors"))
            .unwrap()
            .tensors
    };
    let (plain, recomputed) = (adapters(false), adapters(true));
    assert_eq!(plain.len(), recomputed.len());
    for (k, v) in &plain {
        assert!(common::max_abs_diff(v, &recomputed[k]) < 1e-5, "{k}");
    }
}

/// Two classes (REFUGE disc and cup, three raters each, majority target) through the whole
/// pipeline: DiceCE loss, one mask token per class, per-class validation.
#[test]
fn multi_class_training_learns_disc_and_cup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("refuge");
    write_refuge_dataset(&data, 30, (96, 72), 21, 3).unwrap();
    let base = fixture("sam_tiny.safetensors");
    let out = dir.path().join("run");
    let mut c = config(&base, &data, &out, 12);
    c.dataset = DatasetKind::Refuge;
    c.train = TrainMode::All;
    c.lr = 1e-3;
    c.val_every = 4;
    msa::train::run::run(&c, &Device::Cpu, false).unwrap();
    let before = val_summary(&base, None, &data, DatasetKind::Refuge);
    let trained = out.join("adapters_last.safetensors");
    let after = val_summary(&trained, None, &data, DatasetKind::Refuge);
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    for class in ["disc", "cup"] {
        let (b, a) = (&before.per_class[class], &after.per_class[class]);
        eprintln!(
            "{class}: validation Dice {:.4} -> {:.4}",
            b.dice.mean, a.dice.mean
        );
        assert!(
            a.dice.mean > b.dice.mean + 0.2,
            "{class}: {:.4} -> {:.4}\n{metrics}",
            b.dice.mean,
            a.dice.mean
        );
    }
}

/// Mean Dice over the classes of `cases`, prompts drawn per slice from the labels.
fn volume_dice(
    base: &Path,
    adapters: Option<&Path>,
    data: &Path,
    cases: &[msa::data::decathlon::VolumeCase],
) -> (f64, Vec<msa::eval::evaluate::CaseResult>) {
    use msa::eval::volume::{evaluate_case, VolumeEvalSpec};
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let opts = LoadOptions {
        config: Some(&cfg),
        adapters_file: adapters,
        ..Default::default()
    };
    let loaded = load_model(base, &opts, &Device::Cpu).unwrap();
    let ds = msa::data::decathlon::Decathlon::open(data).unwrap();
    let labels = msa::data::decathlon::LabelMap::identity(&ds.labels).unwrap();
    let spec = VolumeEvalSpec {
        labels: &labels,
        class_names: ds.class_names(&labels, false),
        kind: PromptKind::Click,
        seed: 3,
        intensity: None,
        modality: ds.modality.clone(),
    };
    let results: Vec<_> = cases
        .iter()
        .flat_map(|c| evaluate_case(&loaded.sam, c, &spec, None).unwrap().results)
        .collect();
    (summarize(&results).dice.mean, results)
}

/// Volumes end to end: chunks of 4 slices through the encoder with its depth branch, one
/// click per class and labelled slice, DiceCE over two classes; the adapters (depth ones
/// included) beat the frozen base on held-out volumes, the run folder is complete, and the
/// adapter file tells inference to encode 4-slice chunks.
#[test]
fn depth_adapters_learn_on_generated_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = pretrained_base(dir);
    let data = dir.join("volumes");
    msa::data::synthetic::write_decathlon_dataset(&data, 9, [48, 40, 10], [1.5, 1.5, 3.0], 21)
        .unwrap();
    let out = dir.join("run3d");
    // The base answers these volumes with logits above zero everywhere; the adapters first
    // push everything below zero and need a high rate to leave that plateau.
    let mut cfg = config(&base, &data, &out, 16);
    cfg.dataset = DatasetKind::Decathlon;
    cfg.three_d = true;
    cfg.chunk = 4;
    cfg.holdout = 3;
    cfg.batch_size = 1;
    cfg.lr = 1e-2;
    cfg.val_every = 8;
    cfg.val_fraction = 0.2;
    let result = msa::train::run::run(&cfg, &Device::Cpu, false).unwrap();
    for f in [
        "config.toml",
        "intensity.txt",
        "metrics.csv",
        "curves.png",
        "adapters_best.safetensors",
        "state_last.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(out.join("samples/epoch_016").read_dir().unwrap().count() >= 1);
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("split.json")).unwrap()).unwrap();
    assert_eq!(split["test"].as_array().unwrap().len(), 3, "{split}");
    assert_eq!(split["val"].as_array().unwrap().len(), 1, "{split}");
    let adapters = out.join("adapters_last.safetensors");
    let (tensors, meta) = msa::weights::adapter_file::load(&adapters).unwrap();
    let meta = meta.unwrap();
    assert!(
        meta.adapters.depth && meta.adapters.depth_chunk == 4,
        "{meta:?}"
    );
    assert!(tensors.keys().any(|k| k.contains("Depth_Adapter")));
    let test = msa::data::decathlon::Decathlon::open(&data)
        .unwrap()
        .holdout(3)
        .1;
    let (frozen, _) = volume_dice(&base, None, &data, &test);
    let (adapted, per_class) = volume_dice(&base, Some(&adapters), &data, &test);
    eprintln!(
        "held-out volume Dice: frozen {frozen:.4}, adapted {adapted:.4}, history {:?}",
        result.history
    );
    assert!(
        adapted > frozen + 0.1,
        "adapted {adapted:.4} vs frozen {frozen:.4}: {per_class:?}"
    );
    // Resuming continues after the last epoch.
    let err = msa::train::run::run(&cfg, &Device::Cpu, false).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    cfg.epochs = 17;
    let resumed = msa::train::run::run(&cfg, &Device::Cpu, true).unwrap();
    assert_eq!(resumed.history.len(), 17);
}

/// A training volume whose label does not match its image stops a volume run before it
/// starts, naming the case; `--skip-bad` trains on the others.
#[test]
fn bad_training_volumes_are_named_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("volumes");
    msa::data::synthetic::write_decathlon_dataset(&data, 4, [32, 24, 6], [1.0; 3], 5).unwrap();
    let other = tmp.path().join("other");
    msa::data::synthetic::write_decathlon_dataset(&other, 1, [30, 24, 6], [1.0; 3], 6).unwrap();
    std::fs::copy(
        other.join("labelsTr/blob_000.nii.gz"),
        data.join("labelsTr/blob_001.nii.gz"),
    )
    .unwrap();
    let out = tmp.path().join("run");
    let mut cfg = config(&fixture("sam_tiny.safetensors"), &data, &out, 1);
    cfg.dataset = DatasetKind::Decathlon;
    cfg.three_d = true;
    cfg.chunk = 2;
    cfg.batch_size = 1;
    cfg.val_fraction = 0.0;
    let err = format!(
        "{:#}",
        msa::train::run::run(&cfg, &Device::Cpu, false).unwrap_err()
    );
    assert!(
        err.contains("blob_001") && err.contains("--skip-bad") && err.contains("[30, 24, 6]"),
        "{err}"
    );
    cfg.skip_bad = true;
    cfg.out = tmp.path().join("run_skip");
    msa::train::run::run(&cfg, &Device::Cpu, false).unwrap();
    let split = std::fs::read_to_string(cfg.out.join("split.json")).unwrap();
    assert!(
        !split.contains("blob_001") && split.contains("blob_002"),
        "{split}"
    );
}
