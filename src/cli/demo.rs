//! `msa demo`: the method on real data in a few minutes on a laptop. LiteMedSAM (fetched),
//! real MRI slices shipped in the repository, frozen LiteMedSAM evaluated with a click and
//! with a box on held-out slices, MSA decoder adapters (HyP-Adpt, MLP and image adapters)
//! trained with click prompts, the same evaluation again, a table, pictures, one JSON line.

use crate::data::layout::{discover, DatasetKind, Item, Splits};
use crate::data::prompts::PromptKind;
use crate::data::sample::load_item;
use crate::eval::evaluate::{evaluate, prompt_for, summarize, PromptSource};
use crate::infer::{EmbeddingCache, Predictor, UserPrompt};
use crate::io::image::overlay;
use crate::model::Sam;
use crate::train::config::{TrainConfig, TrainMode};
use crate::weights::{load_model, LoadOptions, Loaded};
use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Folder for the run, the evaluations and the pictures.
    #[arg(long, default_value = "demo_out")]
    pub out: PathBuf,
    /// The dataset (folder layout with split.json); default: the hippocampus MRI slices
    /// shipped in the repository.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Base checkpoint: a named model or a file.
    #[arg(long, default_value = "lite_medsam")]
    pub checkpoint: PathBuf,
    /// Training epochs; default 12, or with --3d 1.
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Adapter bottleneck as a fraction of the width. At 0.125 HyP-Adpt's generated r x r
    /// matrix is 32 x 32 and 7% of LiteMedSAM trains; at 0.25 it is 64 x 64 and 20% does.
    #[arg(long, default_value_t = 0.125)]
    pub adapter_ratio: f64,
    /// Use only the first N training (and validation) cases; 0 for all.
    #[arg(long, default_value_t = 0)]
    pub train_cases: usize,
    /// Use only the first N test cases; 0 for all.
    #[arg(long, default_value_t = 0)]
    pub test_cases: usize,
    /// The same story on volumes: the hippocampus MRI volumes shipped in the repository,
    /// MSA adapters with depth adapters trained on chunks of slices.
    #[arg(long = "3d")]
    pub three_d: bool,
    /// With --3d: consecutive slices per chunk.
    #[arg(long, default_value_t = 4)]
    pub chunk: usize,
    /// With --3d: chunks drawn per training volume and epoch.
    #[arg(long, default_value_t = 1)]
    pub chunks_per_case: usize,
}

impl DemoArgs {
    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or(if self.three_d { 1 } else { 12 })
    }
}

pub(super) const SEED: u64 = 0;

fn default_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/hippocampus2d")
}

/// Dice of one model and prompt kind on the test cases, with the seconds it took.
struct Score {
    dice: f64,
    seconds: f64,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if args.three_d {
        return super::demo_volume::run(args);
    }
    let start = Instant::now();
    let data = args.data.clone().unwrap_or_else(default_data);
    let splits = demo_splits(&data, args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let device = super::default_device()?;
    let frozen = load_model(&args.checkpoint, &LoadOptions::default(), &device)?;
    println!(
        "demo: {} ({}), {} train / {} validation / {} test cases from {}",
        args.checkpoint.display(),
        frozen.preset,
        splits.train.len(),
        splits.val.len(),
        splits.test.len(),
        data.display()
    );
    // Decoder adapters leave the encoder as it is, so every model here shares embeddings.
    let mut cache = EmbeddingCache::new(4 << 30);
    let kinds = [PromptKind::Click, PromptKind::Box];
    let before = kinds
        .iter()
        .map(|&k| score(&frozen.sam, &splits, k, &mut cache))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "frozen: click Dice {:.3}, box Dice {:.3}",
        before[0].dice, before[1].dice
    );
    let run_dir = args.out.join("run");
    let train_start = Instant::now();
    let adapted = train_adapters(args, &data, &run_dir, &device)?;
    let train_seconds = train_start.elapsed().as_secs_f64();
    let after = kinds
        .iter()
        .map(|&k| score(&adapted.sam, &splits, k, &mut cache))
        .collect::<Result<Vec<_>>>()?;
    let trainable_percent = trainable_percent(&adapted);
    let picture = args.out.join("comparison.png");
    comparison(
        &frozen.sam,
        &adapted.sam,
        &splits.test,
        &mut cache,
        &picture,
    )?;
    print_table(&kinds, &before, &after, trainable_percent, train_seconds);
    println!(
        "wrote {} (image | ground truth | frozen | adapted, click in yellow), {}/curves.png",
        picture.display(),
        run_dir.display()
    );
    print_result_line(before[0].dice, after[0].dice, trainable_percent, start);
    Ok(())
}

/// Share of the adapted model's parameters that trained, in percent.
pub(super) fn trainable_percent(adapted: &Loaded) -> f64 {
    let total = adapted.part_params.values().sum::<usize>() + adapted.adapter_params;
    100.0 * adapted.adapter_params as f64 / total as f64
}

/// The demos' last line: one JSON object with the click Dice before and after.
pub(super) fn print_result_line(frozen: f64, adapted: f64, pct: f64, start: Instant) {
    let line = json!({
        "frozen_dice": frozen,
        "adapted_dice": adapted,
        "trainable_percent": pct,
        "seconds": start.elapsed().as_secs_f64(),
    });
    println!("{line}");
}

fn demo_splits(data: &Path, args: &DemoArgs) -> Result<Splits> {
    let mut splits = discover(DatasetKind::Folder, data, SEED, 0.2)?;
    if splits.train.is_empty() || splits.test.is_empty() {
        bail!(
            "{}: the demo needs a split.json with train and test cases",
            data.display()
        );
    }
    let limit = |v: &mut Vec<Item>, n: usize| {
        if n > 0 {
            v.truncate(n);
        }
    };
    limit(&mut splits.train, args.train_cases);
    limit(&mut splits.val, args.train_cases);
    limit(&mut splits.test, args.test_cases);
    Ok(splits)
}

fn score(
    sam: &Sam,
    splits: &Splits,
    kind: PromptKind,
    cache: &mut EmbeddingCache,
) -> Result<Score> {
    let t = Instant::now();
    let source = PromptSource::Drawn { kind, seed: SEED };
    let results = evaluate(
        sam,
        &splits.test,
        &splits.classes,
        &source,
        None,
        Some(cache),
        |_| {},
    )?;
    Ok(Score {
        dice: summarize(&results).dice.mean,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Trains the decoder adapters with click prompts through `msa train`'s own loop, and loads
/// the best of them (by validation Dice) over the base.
fn train_adapters(
    args: &DemoArgs,
    data: &Path,
    run_dir: &Path,
    device: &candle_core::Device,
) -> Result<Loaded> {
    let mut cfg = demo_train_config(args, data, run_dir)?;
    cfg.train = TrainMode::Decoder;
    cfg.batch_size = 4;
    cfg.augment = false; // keeps the embeddings of the frozen encoder cacheable
    cfg.samples = 2;
    crate::train::run::run(&cfg, device, false)?;
    let best = run_dir.join("adapters_best.safetensors");
    let file = if best.exists() {
        best
    } else {
        run_dir.join("adapters_last.safetensors")
    };
    load_adapted(args, &file, device)
}

/// The demo's training settings (click prompts, its epochs, rate, ratio and seed) for a
/// fresh run folder.
pub(super) fn demo_train_config(
    args: &DemoArgs,
    data: &Path,
    run_dir: &Path,
) -> Result<TrainConfig> {
    if run_dir.exists() {
        std::fs::remove_dir_all(run_dir).with_context(|| {
            format!("cannot clear the demo's previous run {}", run_dir.display())
        })?;
    }
    let mut cfg = TrainConfig::new(
        args.checkpoint.clone(),
        data.to_path_buf(),
        run_dir.to_path_buf(),
    );
    cfg.prompt = PromptKind::Click;
    cfg.epochs = args.epochs();
    cfg.lr = args.lr;
    cfg.lr_step = args.epochs().max(1);
    cfg.adapter_ratio = args.adapter_ratio;
    cfg.seed = SEED;
    if args.train_cases > 0 {
        cfg.limit = Some(args.train_cases);
    }
    Ok(cfg)
}

/// The base checkpoint with an adapter file over it.
pub(super) fn load_adapted(
    args: &DemoArgs,
    file: &Path,
    device: &candle_core::Device,
) -> Result<Loaded> {
    let opts = LoadOptions {
        adapters_file: Some(file),
        ..Default::default()
    };
    load_model(&args.checkpoint, &opts, device)
}

fn print_table(kinds: &[PromptKind], before: &[Score], after: &[Score], pct: f64, train_s: f64) {
    println!();
    println!(
        "{:<8}{:>13}{:>14}{:>13}{:>10}",
        "prompt", "frozen Dice", "adapted Dice", "trainable %", "seconds"
    );
    for ((k, b), a) in kinds.iter().zip(before).zip(after) {
        let name = format!("{k:?}").to_lowercase();
        println!(
            "{name:<8}{:>13.3}{:>14.3}{pct:>13.2}{:>10.1}",
            b.dice,
            a.dice,
            b.seconds + a.seconds
        );
    }
    println!("(seconds: both evaluations of that prompt; training took {train_s:.1} s)");
}

/// For the first test cases: image, ground truth, frozen and adapted masks (click prompt).
fn comparison(
    frozen: &Sam,
    adapted: &Sam,
    cases: &[Item],
    cache: &mut EmbeddingCache,
    path: &Path,
) -> Result<()> {
    const ZOOM: u32 = 4;
    let source = PromptSource::Drawn {
        kind: PromptKind::Click,
        seed: SEED,
    };
    let mut rows = vec![];
    for item in cases.iter().take(4) {
        let sample = load_item(item)?;
        let Some(prompt) = prompt_for(&sample, &source)? else {
            continue;
        };
        let mut panels = vec![
            sample.image.clone(),
            overlay(&sample.image, &sample.masks[0], [40, 220, 60]),
        ];
        for sam in [frozen, adapted] {
            let mut p = Predictor::new(sam);
            p.set_image_cached(&sample.image, &item.id, cache)?;
            let mask = p.predict_classes(&prompt, 1)?.binary_mask(0)?;
            panels.push(overlay(&sample.image, &mask, [230, 40, 40]));
        }
        let panels: Vec<RgbImage> = panels
            .iter()
            .map(|im| mark_click(&zoom(im, ZOOM), &prompt, ZOOM))
            .collect();
        rows.push(panels);
    }
    let labels = ["image", "ground truth", "frozen", "adapted"];
    tile(&rows, &labels)?
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(super) fn zoom(img: &RgbImage, z: u32) -> RgbImage {
    image::imageops::resize(
        img,
        img.width() * z,
        img.height() * z,
        image::imageops::FilterType::Nearest,
    )
}

fn mark_click(img: &RgbImage, prompt: &UserPrompt, z: u32) -> RgbImage {
    let mut out = img.clone();
    for &(x, y, _) in &prompt.points {
        let (cx, cy) = ((x as u32) * z + z / 2, (y as u32) * z + z / 2);
        for d in 0..=z {
            for (px, py) in [
                (cx + d, cy),
                (cx.saturating_sub(d), cy),
                (cx, cy + d),
                (cx, cy.saturating_sub(d)),
            ] {
                if px < out.width() && py < out.height() {
                    out.put_pixel(px, py, Rgb([250, 220, 40]));
                }
            }
        }
    }
    out
}

/// Rows of panels on a dark background, 4 px apart, under a row of column labels.
pub(super) fn tile(rows: &[Vec<RgbImage>], labels: &[&str]) -> Result<RgbImage> {
    const GAP: u32 = 4;
    const HEADER: u32 = 22;
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0) as u32;
    let cell_w = rows.iter().flatten().map(|p| p.width()).max().unwrap_or(1);
    let cell_h = rows.iter().flatten().map(|p| p.height()).max().unwrap_or(1);
    let w = (cols * (cell_w + GAP) + GAP).max(1);
    let h = HEADER + rows.len() as u32 * (cell_h + GAP) + GAP;
    let mut out = RgbImage::from_pixel(w, h, Rgb([20, 20, 20]));
    for (r, row) in rows.iter().enumerate() {
        for (c, p) in row.iter().enumerate() {
            let x0 = GAP + c as u32 * (cell_w + GAP);
            let y0 = HEADER + GAP + r as u32 * (cell_h + GAP);
            image::imageops::replace(&mut out, p, x0 as i64, y0 as i64);
        }
    }
    draw_labels(&mut out, labels, cell_w + GAP, GAP)?;
    Ok(out)
}

fn draw_labels(img: &mut RgbImage, labels: &[&str], step: u32, x0: u32) -> Result<()> {
    use plotters::prelude::*;
    crate::train::curves::register_font();
    let (w, h) = img.dimensions();
    let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
    let style = TextStyle::from(("sans-serif", 15).into_font()).color(&WHITE);
    for (i, label) in labels.iter().enumerate() {
        let x = (x0 + i as u32 * step + 2) as i32;
        root.draw_text(label, &style, (x, 4))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))
}
