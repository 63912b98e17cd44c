//! Interactive evaluation (MSA-SPEC 3.1a): a seeded first click, then corrective clicks at
//! the largest error, each pass fed the previous logits as its mask prompt. Reports Dice
//! after n clicks and NoC@85 / NoC@90, the clicks needed to reach IoU 0.85 / 0.90.

use super::evaluate::{prompt_for, stat, PromptSource, Stat};
use super::metrics::{dice, iou};
use crate::data::corrective::next_click;
use crate::data::layout::Item;
use crate::data::prompts::PromptKind;
use crate::data::sample::load_item;
use crate::infer::{EmbeddingCache, Predictor};
use crate::model::Sam;
use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::Serialize;
use std::path::Path;

/// A case that never reaches the IoU counts this many clicks.
pub const NOC_CAP: usize = 20;

/// The most clicks the counts asked for (`--clicks 1,3,5` -> 5); counts start at 1.
pub fn most_clicks(counts: &[usize]) -> Result<usize> {
    if counts.contains(&0) {
        anyhow::bail!("clicks {counts:?}: counts start at 1");
    }
    Ok(counts.iter().copied().max().unwrap_or(1))
}

/// One case's Dice and IoU (means over classes) after 1, 2, ... clicks.
#[derive(Debug, Clone)]
pub struct ClickTrace {
    pub case: String,
    pub dice: Vec<f64>,
    pub iou: Vec<f64>,
}

impl ClickTrace {
    /// Dice after `n` clicks; a case that stopped earlier (perfect, or past the counts
    /// asked for with IoU 0.90 reached) keeps its last value.
    pub fn dice_at(&self, n: usize) -> f64 {
        at(&self.dice, n)
    }

    /// The clicks needed to reach IoU `t`, NOC_CAP when never.
    pub fn clicks_to(&self, t: f64) -> usize {
        self.iou
            .iter()
            .take(NOC_CAP)
            .position(|&v| v >= t)
            .map_or(NOC_CAP, |i| i + 1)
    }
}

fn at(v: &[f64], n: usize) -> f64 {
    v.get(n.saturating_sub(1))
        .or(v.last())
        .copied()
        .unwrap_or(f64::NAN)
}

/// Every case clicked through: at least `most` clicks, on to NOC_CAP unless IoU 0.90 is
/// reached first; the first click seeded per case as `--prompt click` draws it. With
/// `feedback`, each pass gets the previous pass's logits as its mask prompt.
pub fn click_traces(
    sam: &Sam,
    items: &[Item],
    classes: usize,
    (seed, most, feedback): (u64, usize, bool),
    mut cache: Option<&mut EmbeddingCache>,
    mut progress: impl FnMut(usize),
) -> Result<Vec<ClickTrace>> {
    let source = PromptSource::Drawn {
        kind: PromptKind::Click,
        seed,
    };
    let mut traces = vec![];
    for (n, item) in items.iter().enumerate() {
        let sample = load_item(item)?;
        let Some(mut prompt) = prompt_for(&sample, &source)? else {
            tracing::warn!("{}: empty target; skipped", item.id);
            continue;
        };
        let mut predictor = Predictor::new(sam);
        match cache.as_deref_mut() {
            Some(c) => predictor.set_image_cached(&sample.image, &item.id, c)?,
            None => predictor.set_image(&sample.image)?,
        }
        let (h, w) = sample.size();
        let target: Vec<bool> = (0..h * w)
            .map(|i| sample.masks.iter().any(|m| m[i]))
            .collect();
        let mut trace = ClickTrace {
            case: item.id.clone(),
            dice: vec![],
            iou: vec![],
        };
        let mut previous: Option<Tensor> = None;
        for clicks in 1..=most.max(NOC_CAP) {
            let pred = predictor.predict_classes_refined(&prompt, classes, previous.as_ref())?;
            let mut union = vec![false; h * w];
            let (mut d, mut j) = (0.0, 0.0);
            for (k, truth) in sample.masks.iter().enumerate() {
                let binary = pred.binary_mask(k)?;
                d += dice(&binary, truth) / classes as f64;
                j += iou(&binary, truth) / classes as f64;
                for (u, b) in union.iter_mut().zip(&binary) {
                    *u |= b;
                }
            }
            trace.dice.push(d);
            trace.iou.push(j);
            if clicks >= most && j >= 0.90 {
                break;
            }
            let Some(click) = next_click(&union, &target, w, h) else {
                break;
            };
            prompt.points.push(click);
            if feedback {
                previous = Some(pred.low_res_logits.max_keepdim(0)?.unsqueeze(0)?);
            }
        }
        traces.push(trace);
        progress(n + 1);
    }
    Ok(traces)
}

#[derive(Debug, Clone, Serialize)]
pub struct AtClicks {
    pub clicks: usize,
    pub dice: Stat,
    pub iou: Stat,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClicksSummary {
    pub n_cases: usize,
    /// The counts asked for.
    pub at: Vec<AtClicks>,
    pub noc85: Stat,
    pub noc90: Stat,
    /// Cases that reached IoU 0.85 / 0.90 within NOC_CAP clicks.
    pub reached85: usize,
    pub reached90: usize,
    pub noc_cap: usize,
    /// Mean Dice after 1..=NOC_CAP clicks (the curve).
    pub dice_curve: Vec<f64>,
}

pub fn summarize_clicks(traces: &[ClickTrace], counts: &[usize]) -> ClicksSummary {
    let over = |f: &dyn Fn(&ClickTrace) -> f64| -> Vec<f64> { traces.iter().map(f).collect() };
    let noc = |t: f64| over(&|c| c.clicks_to(t) as f64);
    let reached = |t: f64| {
        traces
            .iter()
            .filter(|c| c.iou.iter().take(NOC_CAP).any(|&v| v >= t))
            .count()
    };
    ClicksSummary {
        n_cases: traces.len(),
        at: counts
            .iter()
            .map(|&n| AtClicks {
                clicks: n,
                dice: stat(&over(&|c| c.dice_at(n))),
                iou: stat(&over(&|c| at(&c.iou, n))),
            })
            .collect(),
        noc85: stat(&noc(0.85)),
        noc90: stat(&noc(0.90)),
        reached85: reached(0.85),
        reached90: reached(0.90),
        noc_cap: NOC_CAP,
        dice_curve: (1..=NOC_CAP)
            .map(|n| stat(&over(&|c| c.dice_at(n))).mean)
            .collect(),
    }
}

/// `clicks.csv` (case, clicks, dice, iou: every pass) and `clicks.json` (the summary).
pub fn write_click_reports(
    out: &Path,
    traces: &[ClickTrace],
    counts: &[usize],
) -> Result<ClicksSummary> {
    let mut csv = String::from("case,clicks,dice,iou\n");
    for t in traces {
        for (i, (d, j)) in t.dice.iter().zip(&t.iou).enumerate() {
            csv.push_str(&format!("{},{},{d:.6},{j:.6}\n", t.case, i + 1));
        }
    }
    let path = out.join("clicks.csv");
    std::fs::write(&path, csv).with_context(|| format!("cannot write {}", path.display()))?;
    let summary = summarize_clicks(traces, counts);
    let path = out.join("clicks.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(iou: &[f64]) -> ClickTrace {
        ClickTrace {
            case: "c".into(),
            dice: iou.to_vec(),
            iou: iou.to_vec(),
        }
    }

    #[test]
    fn noc_counts_clicks_and_caps_cases_that_never_get_there() {
        let t = trace(&[0.5, 0.86, 0.91]);
        assert_eq!(t.clicks_to(0.85), 2);
        assert_eq!(t.clicks_to(0.90), 3);
        assert_eq!(trace(&[0.2; NOC_CAP]).clicks_to(0.85), NOC_CAP);
        // A case that stopped keeps its last value for later counts.
        assert_eq!(t.dice_at(5), 0.91);
        let s = summarize_clicks(&[t, trace(&[0.2; NOC_CAP])], &[1, 3]);
        assert_eq!(s.noc90.mean, (3.0 + 20.0) / 2.0);
        assert_eq!(s.reached90, 1);
        assert_eq!(s.at[1].dice.mean, (0.91 + 0.2) / 2.0);
    }
}
