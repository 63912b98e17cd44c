//! Training on volumes (Decathlon layout): chunks of D consecutive slices through the
//! encoder with its depth branch, one prompt per class on each labelled slice, multi-organ
//! DiceCE; validation segments whole held-out volumes as `msa eval` does.

use super::batches::epoch_chunks;
use super::config::TrainConfig;
use super::loss::dice_ce_by_class;
use super::optim::Adam;
use super::phase::{mark, Phase};
use super::step::{apply_loss, mean_loss, report_bad, EpochProgress, Step, TrainData};
use crate::data::chunks::{epoch_len, scan, ChunkSpec, PreparedChunk, VolumeItem};
use crate::data::decathlon::{Decathlon, LabelMap, VolumeCase};
use crate::data::synthetic::SplitMix;
use crate::eval::evaluate::summarize;
use crate::eval::volume::{evaluate_case, write_montage, VolumeEvalSpec};
use crate::io::Intensity;
use crate::model::Sam;
use crate::resize::bilinear;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Probability that a training chunk is placed around a labelled slice.
const TARGET_BIAS: f64 = 0.9;

pub(crate) struct VolumeData {
    cfg: TrainConfig,
    train: Vec<VolumeItem>,
    val: Vec<VolumeCase>,
    test: Vec<VolumeCase>,
    labels: LabelMap,
    class_names: Vec<String>,
    modality: Option<String>,
    intensity: Option<Intensity>,
    /// How slices become 8-bit images, in words (the run folder's `intensity.txt`).
    intensity_how: String,
    how: String,
}

impl VolumeData {
    /// The dataset's cases split into train, validation and held-out test, every training
    /// case read once to check it; bad cases stop the run or are skipped (`--skip-bad`).
    pub fn open(cfg: &TrainConfig) -> Result<Self> {
        if cfg.chunk == 0 {
            bail!("--chunk must be at least 1 slice");
        }
        let ds = Decathlon::open_along(&cfg.data, cfg.axis, cfg.series.as_deref())?;
        let labels = match &cfg.labels {
            Some(s) => LabelMap::parse(s)?,
            None => LabelMap::identity(&ds.labels)?,
        };
        if labels.classes() == 0 {
            bail!(
                "{}: dataset.json names no labels besides the background; pass --labels",
                cfg.data.display()
            );
        }
        let intensity = cfg.window.as_deref().map(Intensity::parse).transpose()?;
        let (rest, test) = ds.holdout(cfg.holdout);
        let (mut train, mut val, how) = if ds.validation.is_empty() {
            let (t, v) = split_off_validation(rest, cfg.val_fraction, cfg.seed);
            (
                t,
                v,
                format!(
                    "validation: {:.0}% of the training list, seeded",
                    100.0 * cfg.val_fraction
                ),
            )
        } else {
            (
                rest,
                ds.validation.clone(),
                "validation: dataset.json's list".to_string(),
            )
        };
        if let Some(n) = cfg.limit {
            train.truncate(n);
            val.truncate(n);
        }
        let (items, bad) = scan(&train, &labels);
        report_bad(&bad, cfg.skip_bad)?;
        if items.is_empty() {
            bail!("{}: no usable training volumes", cfg.data.display());
        }
        let intensity_how = ds.intensity_how(intensity.as_ref());
        println!("volumes: intensity {intensity_how}");
        Ok(Self {
            class_names: ds.class_names(&labels, cfg.labels.is_some()),
            cfg: cfg.clone(),
            train: items,
            val,
            test,
            labels,
            modality: ds.modality,
            intensity,
            intensity_how,
            how,
        })
    }

    fn chunk_spec(&self, sam: &Sam) -> ChunkSpec {
        ChunkSpec {
            cfg: sam.config.clone(),
            chunk: self.cfg.chunk,
            kind: self.cfg.prompt,
            seed: self.cfg.seed,
            labels: self.labels.clone(),
            intensity: self.intensity,
            modality: self.modality.clone(),
            augment: self.cfg.augment,
            target_bias: TARGET_BIAS,
            chunks_per_case: self.cfg.chunks_per_case,
        }
    }
}

/// A seeded share of the cases for validation (at least one when the share is positive
/// and two or more cases remain).
fn split_off_validation(
    mut cases: Vec<VolumeCase>,
    fraction: f64,
    seed: u64,
) -> (Vec<VolumeCase>, Vec<VolumeCase>) {
    let n = cases.len();
    let n_val = if fraction > 0.0 && n >= 2 {
        ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    let mut rng = SplitMix(seed ^ 0x005E_ED0F_5A11);
    for i in (1..n).rev() {
        cases.swap(i, rng.below(i + 1));
    }
    let val = cases.split_off(n - n_val);
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    let mut val = val;
    val.sort_by(|a, b| a.id.cmp(&b.id));
    (cases, val)
}

impl TrainData for VolumeData {
    fn split_ids(&self) -> BTreeMap<&'static str, Vec<String>> {
        let ids = |v: &mut dyn Iterator<Item = &VolumeCase>| v.map(|c| c.id.clone()).collect();
        BTreeMap::from([
            ("train", ids(&mut self.train.iter().map(|i| &i.case))),
            ("val", ids(&mut self.val.iter())),
            ("test", ids(&mut self.test.iter())),
        ])
    }

    fn describe(&self) -> serde_json::Value {
        json!({"train": self.train.len(), "val": self.val.len(), "test": self.test.len(),
            "split": self.how, "chunk": self.cfg.chunk, "classes": self.class_names,
            "chunks_per_epoch": epoch_len(&self.train, self.cfg.chunk, self.cfg.chunks_per_case)})
    }

    fn has_validation(&self) -> bool {
        !self.val.is_empty()
    }

    fn notes(&self) -> Vec<(&'static str, String)> {
        vec![("intensity.txt", format!("{}\n", self.intensity_how))]
    }

    fn train_epoch(&mut self, step: &Step, adam: &mut Adam, epoch: usize) -> Result<f64> {
        let d = self.cfg.chunk;
        let per_step = self.cfg.batch_size.max(1);
        let n = epoch_len(&self.train, d, self.cfg.chunks_per_case);
        let progress =
            EpochProgress::new(step, &self.cfg, (epoch, n.div_ceil(per_step)), "slices")?;
        let start = std::time::Instant::now();
        let (mut sum, mut count, mut slices) = (0.0, 0usize, 0usize);
        let chunks = epoch_chunks(
            self.chunk_spec(step.sam),
            self.train.clone(),
            epoch,
            self.cfg.workers,
        )?;
        let mut batch: Vec<PreparedChunk> = Vec::with_capacity(per_step);
        let mut flush = |batch: &mut Vec<PreparedChunk>| -> Result<()> {
            if let Some(loss) = chunk_step(step, adam, batch, d)? {
                sum += loss;
                count += 1;
            }
            slices += batch.len() * d;
            batch.clear();
            let rate = slices as f64 / start.elapsed().as_secs_f64().max(1e-9);
            progress.advance(sum / count.max(1) as f64, rate, step.sam.device())
        };
        loop {
            mark(Phase::Data);
            let Ok(chunk) = chunks.recv() else { break };
            batch.push(chunk?);
            if batch.len() == per_step {
                flush(&mut batch)?;
            }
        }
        if !batch.is_empty() {
            flush(&mut batch)?;
        }
        progress.finish();
        Ok(mean_loss(sum, count))
    }

    fn validate(&mut self, sam: &Sam, dir: &Path) -> Result<(f64, f64)> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let spec = VolumeEvalSpec {
            labels: &self.labels,
            class_names: self.class_names.clone(),
            kind: self.cfg.prompt,
            seed: self.cfg.seed,
            intensity: self.intensity,
            modality: self.modality.clone(),
        };
        let mut results = vec![];
        for (i, case) in self.val.iter().enumerate() {
            let outcome = evaluate_case(sam, case, &spec, None)?;
            if i < self.cfg.samples {
                write_montage(&dir.join(format!("{}.png", case.id)), &outcome, 4)?;
            }
            results.extend(outcome.results);
        }
        let s = summarize(&results);
        Ok((s.dice.mean, s.iou.mean))
    }
}

/// Forward, loss, backward and one Adam update over a batch of chunks; None when no slice
/// of the batch holds a target (nothing to learn from).
fn chunk_step(
    step: &Step,
    adam: &mut Adam,
    chunks: &[PreparedChunk],
    d: usize,
) -> Result<Option<f64>> {
    mark(Phase::Forward);
    let sam = step.sam;
    let dev = sam.device();
    let s = sam.config.img_size;
    let mut rows = vec![];
    let mut classes = vec![];
    let mut masks = vec![];
    let mut prompts = vec![];
    for (c, chunk) in chunks.iter().enumerate() {
        for t in &chunk.targets {
            rows.push((c * d + t.slice) as u32);
            classes.push(t.class);
            masks.extend_from_slice(&t.mask);
            prompts.push(t.prompt.clone());
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let input: Vec<f32> = chunks
        .iter()
        .flat_map(|c| c.input.iter().copied())
        .collect();
    let x = Tensor::from_vec(input, (chunks.len() * d, 3, s, s), dev)?;
    let emb = sam.encode_for_training(&x, Some(d), step.recompute)?;
    let emb = emb.index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
    let no_masks = vec![None; prompts.len()];
    let low = super::prompting::decode_mixed(sam, &emb, &prompts, &no_masks, 1)?;
    let logits = bilinear(&low, s, s)?;
    let target = Tensor::from_vec(masks, (rows.len(), 1, s, s), dev)?;
    let loss = dice_ce_by_class(&logits, &target, &classes)?;
    apply_loss(step, adam, Some(&loss), chunks.len())
}
