//! `msa demo --3d`: the demo's story on volumes. Frozen LiteMedSAM against LiteMedSAM with
//! MSA adapters (depth adapters included) trained on chunks of the shipped hippocampus MRI
//! volumes, scored on held-out volumes with one click and with one box per class and slice.

use super::{kind_name, tile, zoom, DemoArgs, Score, Story, KINDS, SEED};
use crate::data::decathlon::{Decathlon, LabelMap, VolumeCase};
use crate::eval::volume::{evaluate_case, VolumeEvalSpec, VolumeOutcome};
use crate::infer::volume::class_overlay;
use crate::infer::EmbeddingCache;
use crate::model::Sam;
use crate::train::config::TrainMode;
use crate::weights::Loaded;
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Cases (sorted by id) held out for testing.
const HOLDOUT: usize = 6;

fn default_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/hippocampus3d")
}

pub(super) struct Volumes {
    data: PathBuf,
    ds: Decathlon,
    labels: LabelMap,
    n_train: usize,
    test: Vec<VolumeCase>,
    /// Per model scored, in order, the click outcomes of every test volume.
    click_outcomes: Vec<Vec<VolumeOutcome>>,
}

impl Volumes {
    pub fn open(args: &DemoArgs) -> Result<Self> {
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
        let n_train = match args.train_cases {
            0 => train.len(),
            n => n.min(train.len()),
        };
        Ok(Self {
            labels: LabelMap::identity(&ds.labels)?,
            data,
            ds,
            n_train,
            test,
            click_outcomes: vec![],
        })
    }
}

impl Story for Volumes {
    fn header(&self, args: &DemoArgs, frozen: &Loaded) -> String {
        format!(
            "demo --3d: {} ({}), {} training / {} held-out volumes from {}",
            args.checkpoint.display(),
            frozen.preset,
            self.n_train,
            self.test.len(),
            self.data.display()
        )
    }

    /// Each prompt kind on every test volume; the volume's embeddings are computed once per
    /// model and shared by the prompt kinds.
    fn score(&mut self, sam: &Sam) -> Result<Vec<Score>> {
        let mut cache = EmbeddingCache::new(2 << 30);
        let mut scores = vec![];
        for kind in KINDS {
            let t = Instant::now();
            let spec = VolumeEvalSpec {
                labels: &self.labels,
                class_names: self.ds.class_names(&self.labels, false),
                kind,
                seed: SEED,
                intensity: None,
                modality: self.ds.modality.clone(),
            };
            let outcomes = self
                .test
                .iter()
                .map(|case| evaluate_case(sam, case, &spec, Some(&mut cache)))
                .collect::<Result<Vec<_>>>()?;
            let results: Vec<_> = outcomes.iter().flat_map(|o| o.results.clone()).collect();
            scores.push(Score::of(&results, t.elapsed().as_secs_f64()));
            if kind == KINDS[0] {
                self.click_outcomes.push(outcomes);
            }
        }
        Ok(scores)
    }

    /// MSA adapters with depth adapters, trained with mixed prompts on chunks of the
    /// training volumes; the last adapters loaded over the base.
    fn train(
        &self,
        args: &DemoArgs,
        run_dir: &Path,
        device: &candle_core::Device,
    ) -> Result<Loaded> {
        let mut cfg = super::demo_train_config(args, TrainMode::Adapters, &self.data, run_dir)?;
        cfg.dataset = crate::data::layout::DatasetKind::Decathlon;
        cfg.three_d = true;
        cfg.chunk = args.chunk;
        cfg.chunks_per_case = args.chunks_per_case;
        cfg.holdout = HOLDOUT;
        cfg.val_fraction = 0.0;
        cfg.batch_size = 1;
        crate::train::run::run(&cfg, device, false)?;
        super::load_adapted(args, &run_dir.join("adapters_last.safetensors"), device)
    }

    fn names(&self) -> (&'static str, &'static str) {
        ("run3d", "comparison3d.png")
    }

    fn caption(&self) -> &'static str {
        "ground truth | frozen | adapted, one click per class and slice"
    }

    fn print_table(&self, before: &[Score], after: &[Score], pct: f64, train_s: f64) {
        println!();
        println!(
            "{:<8}{:<12}{:>13}{:>14}{:>13}",
            "prompt", "class", "frozen Dice", "adapted Dice", "trainable %"
        );
        for ((&k, b), a) in KINDS.iter().zip(before).zip(after) {
            let name = kind_name(k);
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

    fn comparison(&mut self, _: &Sam, _: &Sam, path: &Path) -> Result<()> {
        match self.click_outcomes.as_slice() {
            [frozen, adapted] => comparison(frozen, adapted, path),
            _ => bail!(
                "the 3D demo compares two models, not {}",
                self.click_outcomes.len()
            ),
        }
    }
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
                .map(|classes| Ok(zoom(&class_overlay(vol, k, f.range, classes)?, ZOOM)))
                .collect::<Result<Vec<_>>>()?,
        );
    }
    tile(&rows, &["ground truth", "frozen", "adapted"])?
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
