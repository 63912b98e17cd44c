//! `msa demo`: the method on real data in a few minutes on a laptop. LiteMedSAM (fetched),
//! real MRI data shipped in the repository, frozen LiteMedSAM scored with a click and with a
//! box on held-out cases, MSA adapters trained with mixed prompts through `msa train`'s own
//! loop, the same scores again, a table, a picture, one JSON line. The story is told on 2D
//! slices (`images`) or, with `--3d`, on volumes (`volumes`).

mod images;
mod volumes;

use crate::data::prompts::PromptKind;
use crate::model::Sam;
use crate::train::config::{defaults, TrainConfig, TrainMode};
use crate::weights::{load_model, LoadOptions, Loaded};
use anyhow::{Context, Result};
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
    /// Adam's learning rate; default: msa train's for the story's mode.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adapter bottleneck as a fraction of the width. At 0.125 HyP-Adpt's generated r x r
    /// matrix is 32 x 32 and 7% of LiteMedSAM trains; at 0.25 it is 64 x 64 and 20% does.
    #[arg(long, default_value_t = defaults::ADAPTER_RATIO)]
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

/// The prompt kinds every demo scores, click first.
const KINDS: [PromptKind; 2] = [PromptKind::Click, PromptKind::Box];

/// How one model scored with one prompt kind on the test cases.
struct Score {
    /// Mean Dice over cases (and classes).
    dice: f64,
    /// Mean Dice of each class.
    per_class: Vec<(String, f64)>,
    /// The seconds the scoring took.
    seconds: f64,
}

impl Score {
    /// The score of `results`, computed in `seconds`.
    fn of(results: &[crate::eval::evaluate::CaseResult], seconds: f64) -> Self {
        let summary = crate::eval::evaluate::summarize(results);
        Self {
            dice: summary.dice.mean,
            per_class: summary
                .per_class
                .iter()
                .map(|(name, c)| (name.clone(), c.dice.mean))
                .collect(),
            seconds,
        }
    }
}

/// What the 2D and 3D demos do differently; `run` tells the story in the same order.
trait Story {
    /// The line that introduces the data, once the frozen model is loaded.
    fn header(&self, args: &DemoArgs, frozen: &Loaded) -> String;
    /// `sam` scored with each of `KINDS`.
    fn score(&mut self, sam: &Sam) -> Result<Vec<Score>>;
    /// Trains the adapters in `run_dir` and loads them over the base.
    fn train(
        &self,
        args: &DemoArgs,
        run_dir: &Path,
        device: &candle_core::Device,
    ) -> Result<Loaded>;
    /// The run folder's and the picture's names under `--out`.
    fn names(&self) -> (&'static str, &'static str);
    /// What the picture's columns show.
    fn caption(&self) -> &'static str;
    fn print_table(&self, before: &[Score], after: &[Score], pct: f64, train_s: f64);
    /// The picture of test cases under both models.
    fn comparison(&mut self, frozen: &Sam, adapted: &Sam, path: &Path) -> Result<()>;
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    let mut story: Box<dyn Story> = match args.three_d {
        true => Box::new(volumes::Volumes::open(args)?),
        false => Box::new(images::Images::open(args)?),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let device = crate::runtime::device::default_device()?;
    let frozen = load_model(&args.checkpoint, &LoadOptions::default(), &device)?;
    println!("{}", story.header(args, &frozen));
    let before = story.score(&frozen.sam)?;
    println!(
        "frozen: click Dice {:.3}, box Dice {:.3}",
        before[0].dice, before[1].dice
    );
    let (run_name, picture_name) = story.names();
    let run_dir = args.out.join(run_name);
    let train_start = Instant::now();
    let adapted = story.train(args, &run_dir, &device)?;
    let train_seconds = train_start.elapsed().as_secs_f64();
    let after = story.score(&adapted.sam)?;
    let pct = trainable_percent(&adapted);
    let picture = args.out.join(picture_name);
    story.comparison(&frozen.sam, &adapted.sam, &picture)?;
    story.print_table(&before, &after, pct, train_seconds);
    println!(
        "wrote {} ({}), {}/curves.png",
        picture.display(),
        story.caption(),
        run_dir.display()
    );
    print_result_line(before[0].dice, after[0].dice, pct, start);
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

/// The demo's training settings for a fresh run folder: msa train's defaults (prompts, the
/// mode's rate) with the demo's mode, epochs, ratio and seed.
pub(super) fn demo_train_config(
    args: &DemoArgs,
    mode: TrainMode,
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
    cfg.epochs = args.epochs();
    cfg.train = mode;
    cfg.lr = args.lr.unwrap_or(defaults::lr(mode));
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

/// A prompt kind's name in the tables.
fn kind_name(kind: PromptKind) -> String {
    format!("{kind:?}").to_lowercase()
}

pub(super) fn zoom(img: &RgbImage, z: u32) -> RgbImage {
    image::imageops::resize(
        img,
        img.width() * z,
        img.height() * z,
        image::imageops::FilterType::Nearest,
    )
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
