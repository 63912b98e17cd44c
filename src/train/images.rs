//! Training on 2D images: splits checked before the run, batches of prepared images,
//! cached embeddings when the encoder is frozen, validation on held-out images.

use super::batches::{epoch_batches, BatchSpec};
use super::config::TrainConfig;
use super::loss::{bce_with_logits, dice_ce};
use super::optim::Adam;
use super::phase::{mark, Phase};
use super::prompting::{corrected_prompts, decode_mixed};
use super::step::{apply_loss, mean_loss, report_bad, EpochProgress, Step, TrainData};
use crate::data::layout::{discover, Splits};
use crate::data::sample::check_items;
use crate::data::transform::Prepared;
use crate::eval::evaluate::{evaluate, summarize, PromptSource};
use crate::infer::EmbeddingCache;
use crate::model::Sam;
use crate::resize::bilinear;
use anyhow::{bail, Result};
use candle_core::Tensor;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Embeddings kept at most (bytes) when the encoder is frozen.
const CACHE_BUDGET: usize = 4 << 30;

pub(crate) struct ImageData {
    cfg: TrainConfig,
    splits: Splits,
    cache: Option<EmbeddingCache>,
    cache_decided: bool,
}

impl ImageData {
    /// Splits with every train/val case loaded once; bad cases stop the run or are skipped.
    pub fn open(cfg: &TrainConfig) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            splits: checked_splits(cfg)?,
            cache: None,
            cache_decided: false,
        })
    }

    /// A frozen encoder on unchanging images gives the same embeddings every epoch.
    fn decide_cache(&mut self, step: &Step) {
        if self.cache_decided {
            return;
        }
        self.cache_decided = true;
        let encoder_frozen = !step.vars.keys().any(|k| k.starts_with("image_encoder."));
        if encoder_frozen && !self.cfg.augment {
            tracing::info!("encoder frozen and no augmentation: image embeddings are cached");
            self.cache = Some(EmbeddingCache::new(CACHE_BUDGET));
        }
    }
}

impl TrainData for ImageData {
    fn split_ids(&self) -> BTreeMap<&'static str, Vec<String>> {
        self.splits.ids()
    }

    fn describe(&self) -> serde_json::Value {
        json!({"train": self.splits.train.len(), "val": self.splits.val.len(),
            "split": self.splits.how})
    }

    fn has_validation(&self) -> bool {
        !self.splits.val.is_empty()
    }

    fn train_epoch(&mut self, step: &Step, adam: &mut Adam, epoch: usize) -> Result<f64> {
        self.decide_cache(step);
        let cfg = &self.cfg;
        let spec = BatchSpec {
            items: self.splits.train.clone(),
            cfg: step.sam.config.clone(),
            batch_size: cfg.batch_size,
            prompt: cfg.prompt,
            corrective_clicks: cfg.corrective_clicks,
            augment: cfg.augment,
            seed: cfg.seed,
            workers: cfg.workers,
            rank: step.comm.rank(),
            world: step.comm.world(),
        };
        let classes = self.splits.classes.len();
        let n_batches = spec
            .items
            .len()
            .div_ceil(spec.batch_size.max(1) * spec.world);
        let progress = EpochProgress::new(step, cfg, (epoch, n_batches), "img")?;
        let parallel = step.comm.world() > 1;
        let start = std::time::Instant::now();
        let (mut sum, mut count, mut images) = (0.0, 0usize, 0usize);
        let batches = epoch_batches(spec, epoch)?;
        loop {
            mark(Phase::Data);
            let Ok(batch) = batches.recv() else { break };
            let batch = batch?;
            // Every rank takes part in every step, with or without samples.
            if batch.is_empty() && !parallel {
                continue;
            }
            let Some(loss) = train_step(step, adam, &batch, classes, self.cache.as_mut())? else {
                continue;
            };
            sum += loss;
            count += 1;
            images += batch.len();
            let rate = images as f64 / start.elapsed().as_secs_f64().max(1e-9);
            progress.advance(sum / count as f64, rate, step.sam.device())?;
        }
        progress.finish();
        Ok(mean_loss(sum, count))
    }

    fn validate(&mut self, sam: &Sam, dir: &Path) -> Result<(f64, f64)> {
        let source = PromptSource::Drawn {
            kind: self.cfg.prompt,
            seed: self.cfg.seed,
        };
        let results = evaluate(
            sam,
            &self.splits.val,
            &self.splits.classes,
            &source,
            Some((dir, self.cfg.samples)),
            self.cache.as_mut(),
            |_| {},
        )?;
        let s = summarize(&results);
        Ok((s.dice.mean, s.iou.mean))
    }
}

/// Splits with every train/val case loaded once; bad cases stop the run or are skipped.
fn checked_splits(cfg: &TrainConfig) -> Result<Splits> {
    let mut splits = discover(cfg.dataset, &cfg.data, cfg.seed, cfg.val_fraction)?;
    if let Some(n) = cfg.limit {
        splits.train.truncate(n);
        splits.val.truncate(n);
    }
    if splits.train.is_empty() {
        bail!("{}: no training cases found", cfg.data.display());
    }
    let (train, mut bad) = check_items(&splits.train);
    let (val, bad_val) = check_items(&splits.val);
    bad.extend(bad_val);
    report_bad(&bad, cfg.skip_bad)?;
    splits.train = train;
    splits.val = val;
    if splits.train.is_empty() {
        bail!("no usable training cases left");
    }
    Ok(splits)
}

/// Forward, loss, backward and one Adam update; returns the loss over all ranks' samples
/// (None when no rank had any).
fn train_step(
    step: &Step,
    adam: &mut Adam,
    batch: &[Prepared],
    classes: usize,
    cache: Option<&mut EmbeddingCache>,
) -> Result<Option<f64>> {
    if batch.is_empty() {
        return apply_loss(step, adam, None, 0);
    }
    let sam = step.sam;
    let dev = sam.device();
    let s = sam.config.img_size;
    let b = batch.len();
    mark(Phase::Forward);
    let target: Vec<f32> = batch.iter().flat_map(|p| p.masks.iter().copied()).collect();
    let target = Tensor::from_vec(target, (b, classes, s, s), dev)?;
    let emb = match cache {
        Some(cache) => {
            let embs = batch
                .iter()
                .map(|p| {
                    cache.get_or_insert(&p.id, || {
                        let x = Tensor::from_vec(p.input.clone(), (1, 3, s, s), dev)?;
                        Ok(sam.encode(&x)?)
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&embs, 0)?
        }
        None => {
            let input: Vec<f32> = batch.iter().flat_map(|p| p.input.iter().copied()).collect();
            let x = Tensor::from_vec(input, (b, 3, s, s), dev)?;
            sam.encode_for_training(&x, None, step.recompute)?
        }
    };
    let (prompts, masks) = match batch.iter().any(|p| p.corrections > 0) {
        true => corrected_prompts(sam, &emb, batch, classes)?,
        false => (
            batch.iter().map(|p| p.prompt.clone()).collect(),
            vec![None; b],
        ),
    };
    let low = decode_mixed(sam, &emb, &prompts, &masks, classes)?;
    let logits = bilinear(&low, s, s)?;
    let loss = if classes == 1 {
        bce_with_logits(&logits, &target, 2.0)?
    } else {
        dice_ce(&logits, &target)?
    };
    apply_loss(step, adam, Some(&loss), b)
}
