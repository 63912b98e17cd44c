//! What a training step needs and what both kinds of training data share: the step's
//! context, the data interface, the backward pass with its update, and the epoch's bar.

use super::config::TrainConfig;
use super::loss_scale::LossScale;
use super::optim::Adam;
use super::parallel::{average, Communicator};
use super::phase::{mark, Phase};
use crate::model::recompute::Recompute;
use crate::model::Sam;
use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// What one optimisation step needs besides the batch.
pub(crate) struct Step<'a> {
    pub sam: &'a Sam,
    pub vars: &'a BTreeMap<String, Var>,
    pub lr: f64,
    pub comm: &'a dyn Communicator,
    /// Set with `--checkpoint-blocks`: the encoder's blocks are recomputed in the backward.
    pub recompute: Option<&'a Arc<Recompute>>,
    /// Set when the encoder computes in f16.
    pub loss_scale: Option<&'a LossScale>,
    /// Told after every step, on the first rank.
    pub observer: Option<&'a dyn Observer>,
}

/// Where a run is after an optimisation step.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Counted from 1, as the bar shows them.
    pub epoch: usize,
    pub step: usize,
    /// Steps in this epoch.
    pub steps: usize,
    /// The epoch's mean loss so far.
    pub loss: f64,
    /// Images (slices of volume chunks) per second so far in this epoch.
    pub rate: f64,
}

/// Told of every step of a run besides its bar (the Python API's callback). An error stops
/// the run; what the run folder holds from its finished epochs stays.
pub trait Observer: Sync {
    fn step(&self, report: &StepReport) -> Result<()>;
}

/// What a run trains and validates on: 2D images or chunks of volumes.
pub(crate) trait TrainData {
    /// Case ids per split, written to split.json.
    fn split_ids(&self) -> BTreeMap<&'static str, Vec<String>>;
    /// Counts for the log's start line.
    fn describe(&self) -> serde_json::Value;
    fn has_validation(&self) -> bool;
    /// One epoch of optimisation steps; returns the mean loss.
    fn train_epoch(&mut self, step: &Step, adam: &mut Adam, epoch: usize) -> Result<f64>;
    /// Mean Dice and IoU on the validation cases, with sample pictures under `dir`.
    fn validate(&mut self, sam: &Sam, dir: &Path) -> Result<(f64, f64)>;
    /// Text files the run folder keeps about the data: (file name, contents).
    fn notes(&self) -> Vec<(&'static str, String)> {
        vec![]
    }
}

/// One epoch's progress: a bar (hidden on ranks after the first) and the run's observer.
pub(crate) struct EpochProgress<'a> {
    bar: ProgressBar,
    report: std::cell::Cell<StepReport>,
    /// What the rate counts ("img", "slices").
    unit: &'static str,
    observer: Option<&'a dyn Observer>,
}

impl<'a> EpochProgress<'a> {
    /// For epoch `epoch` (from 0) of `steps` steps.
    pub fn new(
        step: &Step<'a>,
        cfg: &TrainConfig,
        (epoch, steps): (usize, usize),
        unit: &'static str,
    ) -> Result<Self> {
        let first = step.comm.rank() == 0;
        // An observer shows progress its own way (or not at all) instead of the bar.
        let bar = match first && step.observer.is_none() {
            true => ProgressBar::new(steps as u64),
            false => ProgressBar::hidden(),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}",
            )?
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
        let report = StepReport {
            epoch: epoch + 1,
            step: 0,
            steps,
            loss: f64::NAN,
            rate: 0.0,
        };
        Ok(Self {
            bar,
            report: std::cell::Cell::new(report),
            unit,
            observer: step.observer.filter(|_| first),
        })
    }

    /// One more step, with the epoch's mean loss and rate so far.
    pub fn advance(&self, loss: f64, rate: f64, device: &candle_core::Device) -> Result<()> {
        self.bar.set_message(format!(
            "loss {loss:.4} ({rate:.2} {}/s){}",
            self.unit,
            crate::runtime::memory::peak_label(device)
        ));
        self.bar.inc(1);
        let mut r = self.report.get();
        r.step += 1;
        r.loss = loss;
        r.rate = rate;
        self.report.set(r);
        match self.observer {
            Some(o) => o.step(&r),
            None => Ok(()),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Bad cases stop the run with every reason listed, or with `skip` are skipped with a warning.
pub(crate) fn report_bad(bad: &[(String, String)], skip: bool) -> Result<()> {
    if bad.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = bad
        .iter()
        .map(|(id, why)| format!("  {id}: {why}"))
        .collect();
    if !skip {
        bail!(
            "{} bad case(s); fix them or pass --skip-bad:\n{}",
            bad.len(),
            list.join("\n")
        );
    }
    for l in &list {
        tracing::warn!("skipping{l}");
        eprintln!("warning: skipping{l}");
    }
    Ok(())
}

/// The mean of `count` losses summing to `sum`; NaN for none.
pub(crate) fn mean_loss(sum: f64, count: usize) -> f64 {
    if count > 0 {
        sum / count as f64
    } else {
        f64::NAN
    }
}

/// Backward pass, gradients averaged over the ranks, and one Adam update; returns the mean
/// loss over every rank's samples. `loss` is this rank's mean over its `samples` samples,
/// None when its shard was empty (it still takes part); None back when no rank had any.
pub(crate) fn apply_loss(
    step: &Step,
    adam: &mut Adam,
    loss: Option<&Tensor>,
    samples: usize,
) -> Result<Option<f64>> {
    mark(Phase::Backward);
    let local = match loss {
        Some(l) => {
            crate::runtime::memory::sample(step.sam.device());
            let mut grads = match step.loss_scale {
                Some(s) => (l * s.scale())?.backward()?,
                None => l.backward()?,
            };
            crate::runtime::memory::sample(step.sam.device());
            if let Some(r) = step.recompute {
                r.merge_into(&mut grads)?;
            }
            Some((grads, l.to_scalar::<f32>()? as f64))
        }
        None => None,
    };
    let Some((grads, loss)) = average(step.comm, step.vars, local, samples)? else {
        return Ok(None);
    };
    // Every rank sees the same averaged gradients, so all skip the same steps.
    let grads = match step.loss_scale {
        Some(s) => match s.unscale(grads, step.vars)? {
            Some(g) => g,
            None => return Ok(Some(loss)),
        },
        None => grads,
    };
    mark(Phase::Optimizer);
    adam.step(step.vars, &grads, step.lr)?;
    Ok(Some(loss))
}
