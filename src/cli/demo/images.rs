//! `msa demo`: decoder adapters trained with mixed prompts on the hippocampus MRI slices
//! shipped in the repository (54 train, 6 validation, 30 test slices from other patients).

use super::{kind_name, load_adapted, tile, zoom, DemoArgs, Score, Story, KINDS, SEED};
use crate::data::layout::{discover, DatasetKind, Item, Splits};
use crate::data::prompts::PromptKind;
use crate::data::sample::load_item;
use crate::eval::evaluate::{evaluate, prompt_for, PromptSource};
use crate::infer::{EmbeddingCache, Predictor};
use crate::io::image::overlay;
use crate::io::prompt::UserPrompt;
use crate::model::Sam;
use crate::train::config::TrainMode;
use crate::weights::Loaded;
use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn default_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/hippocampus2d")
}

pub(super) struct Images {
    data: PathBuf,
    splits: Splits,
    /// Decoder adapters leave the encoder as it is, so every model here shares embeddings.
    cache: EmbeddingCache,
}

impl Images {
    pub fn open(args: &DemoArgs) -> Result<Self> {
        let data = args.data.clone().unwrap_or_else(default_data);
        let splits = demo_splits(&data, args)?;
        Ok(Self {
            data,
            splits,
            cache: EmbeddingCache::new(4 << 30),
        })
    }
}

impl Story for Images {
    fn header(&self, args: &DemoArgs, frozen: &Loaded) -> String {
        format!(
            "demo: {} ({}), {} train / {} validation / {} test cases from {}",
            args.checkpoint.display(),
            frozen.preset,
            self.splits.train.len(),
            self.splits.val.len(),
            self.splits.test.len(),
            self.data.display()
        )
    }

    fn score(&mut self, sam: &Sam) -> Result<Vec<Score>> {
        KINDS
            .iter()
            .map(|&k| score(sam, &self.splits, k, &mut self.cache))
            .collect()
    }

    /// Decoder adapters with mixed prompts; the best of them (by validation Dice) loaded.
    fn train(
        &self,
        args: &DemoArgs,
        run_dir: &Path,
        device: &candle_core::Device,
    ) -> Result<Loaded> {
        let mut cfg = super::demo_train_config(args, TrainMode::Decoder, &self.data, run_dir)?;
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

    fn names(&self) -> (&'static str, &'static str) {
        ("run", "comparison.png")
    }

    fn caption(&self) -> &'static str {
        "image | ground truth | frozen | adapted, click in yellow"
    }

    fn print_table(&self, before: &[Score], after: &[Score], pct: f64, train_s: f64) {
        println!();
        println!(
            "{:<8}{:>13}{:>14}{:>13}{:>10}",
            "prompt", "frozen Dice", "adapted Dice", "trainable %", "seconds"
        );
        for ((&k, b), a) in KINDS.iter().zip(before).zip(after) {
            let name = kind_name(k);
            println!(
                "{name:<8}{:>13.3}{:>14.3}{pct:>13.2}{:>10.1}",
                b.dice,
                a.dice,
                b.seconds + a.seconds
            );
        }
        println!("(seconds: both evaluations of that prompt; training took {train_s:.1} s)");
    }

    fn comparison(&mut self, frozen: &Sam, adapted: &Sam, path: &Path) -> Result<()> {
        comparison(frozen, adapted, &self.splits.test, &mut self.cache, path)
    }
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
    Ok(Score::of(&results, t.elapsed().as_secs_f64()))
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
