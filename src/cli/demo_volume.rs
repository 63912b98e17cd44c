//! `msa demo --3d`: the demo's story on volumes. Frozen LiteMedSAM against LiteMedSAM with
//! MSA adapters (depth adapters included) trained on chunks of the shipped hippocampus MRI
//! volumes, scored on held-out volumes with one click and with one box per class and slice.

use super::demo::{DemoArgs, SEED};
use crate::data::decathlon::{Decathlon, LabelMap, VolumeCase};
use crate::data::prompts::PromptKind;
use crate::eval::evaluate::summarize;
use crate::eval::volume::{evaluate_case, VolumeEvalSpec, VolumeOutcome};
use crate::infer::volume::class_overlay;
use crate::infer::EmbeddingCache;
use crate::model::Sam;
use crate::train::config::TrainMode;
use crate::weights::{load_model, LoadOptions, Loaded};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Cases (sorted by id) held out for testing.
const HOLDOUT: usize = 6;

fn default_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/hippocampus3d")
}

/// Mean Dice over test volumes and classes for one prompt kind, with per-case outcomes.
struct Score {
    dice: f64,
    per_class: Vec<(String, f64)>,
    outcomes: Vec<VolumeOutcome>,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    let data = args.data.clone().unwrap_or_else(default_data);
    let ds = Decathlon::open(&data)?;
    let (train, mut test) = ds.holdout(HOLDOUT);
    if train.is_empty() || test.is_empty() {
        bail!(
            "{}: the 3D demo needs more than {HOLDOUT} cases",
            data.display()
        );
    }
    if args.test_cases > 0 {
        test.truncate(args.test_cases);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let device = super::default_device()?;
    let frozen = load_model(&args.checkpoint, &LoadOptions::default(), &device)?;
    let n_train = match args.train_cases {
        0 => train.len(),
        n => n.min(train.len()),
    };
    println!(
        "demo --3d: {} ({}), {n_train} training / {} held-out volumes from {}",
        args.checkpoint.display(),
        frozen.preset,
        test.len(),
        data.display()
    );
    let labels = LabelMap::identity(&ds.labels)?;
    let kinds = [PromptKind::Click, PromptKind::Box];
    let before = score_all(&frozen.sam, &ds, &labels, &test, &kinds)?;
    println!(
        "frozen: click Dice {:.3}, box Dice {:.3}",
        before[0].dice, before[1].dice
    );
    let run_dir = args.out.join("run3d");
    let train_start = Instant::now();
    let adapted = train_adapters(args, &data, &run_dir, &device)?;
    let train_seconds = train_start.elapsed().as_secs_f64();
    let after = score_all(&adapted.sam, &ds, &labels, &test, &kinds)?;
    let trainable_percent = super::demo::trainable_percent(&adapted);
    print_table(&kinds, &before, &after, trainable_percent, train_seconds);
    let picture = args.out.join("comparison3d.png");
    comparison(&before[0].outcomes, &after[0].outcomes, &picture)?;
    println!(
        "wrote {} (ground truth | frozen | adapted, one click per class and slice), {}/curves.png",
        picture.display(),
        run_dir.display()
    );
    super::demo::print_result_line(before[0].dice, after[0].dice, trainable_percent, start);
    Ok(())
}

/// Each prompt kind on every test volume; the volume's embeddings are computed once per
/// model and shared by the prompt kinds.
fn score_all(
    sam: &Sam,
    ds: &Decathlon,
    labels: &LabelMap,
    test: &[VolumeCase],
    kinds: &[PromptKind],
) -> Result<Vec<Score>> {
    let mut cache = EmbeddingCache::new(2 << 30);
    kinds
        .iter()
        .map(|&kind| {
            let spec = VolumeEvalSpec {
                labels,
                class_names: ds.class_names(labels, false),
                kind,
                seed: SEED,
                intensity: None,
                modality: ds.modality.clone(),
            };
            let outcomes = test
                .iter()
                .map(|case| evaluate_case(sam, case, &spec, Some(&mut cache)))
                .collect::<Result<Vec<_>>>()?;
            let results: Vec<_> = outcomes.iter().flat_map(|o| o.results.clone()).collect();
            let summary = summarize(&results);
            Ok(Score {
                dice: summary.dice.mean,
                per_class: summary
                    .per_class
                    .iter()
                    .map(|(name, c)| (name.clone(), c.dice.mean))
                    .collect(),
                outcomes,
            })
        })
        .collect()
}

/// MSA adapters with depth adapters, trained with click prompts on chunks of the training
/// volumes through `msa train`'s own loop; the last adapters loaded over the base.
fn train_adapters(
    args: &DemoArgs,
    data: &Path,
    run_dir: &Path,
    device: &candle_core::Device,
) -> Result<Loaded> {
    let mut cfg = super::demo::demo_train_config(args, data, run_dir)?;
    cfg.dataset = crate::data::layout::DatasetKind::Decathlon;
    cfg.three_d = true;
    cfg.chunk = args.chunk;
    cfg.chunks_per_case = args.chunks_per_case;
    cfg.holdout = HOLDOUT;
    cfg.val_fraction = 0.0;
    cfg.train = TrainMode::Adapters;
    cfg.batch_size = 1;
    crate::train::run::run(&cfg, device, false)?;
    super::demo::load_adapted(args, &run_dir.join("adapters_last.safetensors"), device)
}

fn print_table(kinds: &[PromptKind], before: &[Score], after: &[Score], pct: f64, train_s: f64) {
    println!();
    println!(
        "{:<8}{:<12}{:>13}{:>14}{:>13}",
        "prompt", "class", "frozen Dice", "adapted Dice", "trainable %"
    );
    for ((k, b), a) in kinds.iter().zip(before).zip(after) {
        let name = format!("{k:?}").to_lowercase();
        for ((class, bd), (_, ad)) in b.per_class.iter().zip(&a.per_class) {
            println!("{name:<8}{class:<12}{bd:>13.3}{ad:>14.3}{pct:>13.2}");
        }
        println!(
            "{name:<8}{:<12}{:>13.3}{:>14.3}{pct:>13.2}",
            "mean", b.dice, a.dice
        );
    }
    println!("(training took {train_s:.1} s)");
}

/// Per test volume (up to 4), its middle labelled slice: ground truth, frozen, adapted.
fn comparison(frozen: &[VolumeOutcome], adapted: &[VolumeOutcome], path: &Path) -> Result<()> {
    const ZOOM: u32 = 4;
    let mut rows: Vec<Vec<RgbImage>> = vec![];
    for (f, a) in frozen.iter().zip(adapted).take(4) {
        let vol = &f.volume;
        let n = vol.slice_len();
        let labelled: Vec<usize> = (0..vol.dims[2])
            .filter(|&k| f.truth[k * n..(k + 1) * n].iter().any(|&v| v > 0))
            .collect();
        let Some(&k) = labelled.get(labelled.len() / 2) else {
            continue;
        };
        rows.push(
            [&f.truth, &f.predicted, &a.predicted]
                .iter()
                .map(|classes| {
                    Ok(super::demo::zoom(
                        &class_overlay(vol, k, f.range, classes)?,
                        ZOOM,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
        );
    }
    super::demo::tile(&rows, &["ground truth", "frozen", "adapted"])?
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
