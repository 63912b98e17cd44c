//! Evaluating a model on a list of cases: prompts (seeded from the ground truth, or given),
//! masks at the original size, Dice / IoU / HD95 per case and class, and a summary.

use super::metrics::{dice, hd95, iou};
use crate::data::layout::Item;
use crate::data::prompts::{from_mask, PromptKind};
use crate::data::sample::{load_item, Sample};
use crate::data::synthetic::SplitMix;
use crate::infer::{EmbeddingCache, Predictor};
use crate::io::image::overlay;
use crate::io::prompt::UserPrompt;
use crate::model::Sam;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Where evaluation prompts come from.
#[derive(Debug, Clone)]
pub enum PromptSource {
    /// Drawn from the ground truth with a seed per case, reproducibly.
    Drawn { kind: PromptKind, seed: u64 },
    /// Given per case id (a PROMPTS.json file), in original-image pixels.
    Given(BTreeMap<String, UserPrompt>),
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub class: String,
    pub dice: f64,
    pub iou: f64,
    pub hd95: Option<f64>,
    /// Dice averaged over sigmoid thresholds 0.1..0.9 (the PyTorch MSA code's number).
    pub dice_thresholds: f64,
    pub prompt: String,
}

/// FNV-1a of the case id: a per-case seed that does not depend on the order of cases.
fn case_seed(seed: u64, id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn prompt_for(sample: &Sample, source: &PromptSource) -> Result<Option<UserPrompt>> {
    match source {
        PromptSource::Given(map) => Ok(map.get(&sample.id).cloned()),
        PromptSource::Drawn { kind, seed } => {
            let (h, w) = sample.size();
            let union: Vec<bool> = (0..h * w)
                .map(|i| sample.masks.iter().any(|m| m[i]))
                .collect();
            let mut rng = SplitMix(case_seed(*seed, &sample.id));
            Ok(from_mask(&union, w, h, *kind, &mut rng))
        }
    }
}

/// Evaluates `items`; with `overlay_dir` = (dir, n), writes overlays of the first n cases
/// into dir.
/// With a cache, image embeddings are taken from it (and added to it) by case id.
pub fn evaluate(
    sam: &Sam,
    items: &[Item],
    classes: &[String],
    source: &PromptSource,
    overlay_dir: Option<(&Path, usize)>,
    mut cache: Option<&mut EmbeddingCache>,
    mut progress: impl FnMut(usize),
) -> Result<Vec<CaseResult>> {
    let mut results = vec![];
    for (n, item) in items.iter().enumerate() {
        let sample = load_item(item)?;
        let Some(prompt) = prompt_for(&sample, source)? else {
            tracing::warn!(
                "{}: no prompt (empty target or not in the prompt file); skipped",
                item.id
            );
            continue;
        };
        let mut predictor = Predictor::new(sam);
        match cache.as_deref_mut() {
            Some(c) => predictor.set_image_cached(&sample.image, &item.id, c)?,
            None => predictor.set_image(&sample.image)?,
        }
        let pred = predictor.predict_classes(&prompt, classes.len())?;
        let prompt_json = serde_json::to_string(&prompt_record(&prompt))?;
        let (h, w) = sample.size();
        for (k, class) in classes.iter().enumerate() {
            let logits: Vec<f32> = pred.masks_logits.get(k)?.flatten_all()?.to_vec1()?;
            let target = &sample.masks[k];
            let binary: Vec<bool> = logits.iter().map(|&x| x > 0.0).collect();
            let thresholds = (1..=9)
                .map(|t| {
                    let t = t as f32 / 10.0;
                    let cut = (t / (1.0 - t)).ln();
                    let b: Vec<bool> = logits.iter().map(|&x| x > cut).collect();
                    dice(&b, target)
                })
                .sum::<f64>()
                / 9.0;
            results.push(CaseResult {
                case: item.id.clone(),
                class: class.clone(),
                dice: dice(&binary, target),
                iou: iou(&binary, target),
                hd95: hd95(&binary, target, &[h, w], &[1.0, 1.0]),
                dice_thresholds: thresholds,
                prompt: prompt_json.clone(),
            });
            if let Some((dir, n_max)) = overlay_dir {
                if n < n_max {
                    write_overlay(dir, &sample, k, &binary, &class_suffix(classes, k))?;
                }
            }
        }
        progress(n + 1);
    }
    Ok(results)
}

fn class_suffix(classes: &[String], k: usize) -> String {
    if classes.len() == 1 {
        String::new()
    } else {
        format!("_{}", classes[k])
    }
}

/// Prediction filled red, ground-truth outline green.
fn write_overlay(dir: &Path, sample: &Sample, k: usize, pred: &[bool], suffix: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let img = overlay(&sample.image, pred, [230, 40, 40]);
    let outline =
        crate::eval::metrics::surface(&sample.masks[k], &[sample.size().0, sample.size().1]);
    let mut img = img;
    let (h, w) = sample.size();
    // Thicker on large images, so that the outline survives a thumbnail.
    let r = (h.min(w) / 256) as i64;
    for (i, _) in outline.iter().enumerate().filter(|(_, &o)| o) {
        let (x, y) = ((i % w) as i64, (i / w) as i64);
        for (dx, dy) in (-r..=r).flat_map(|dx| (-r..=r).map(move |dy| (dx, dy))) {
            let (px, py) = (x + dx, y + dy);
            if px >= 0 && py >= 0 && (px as usize) < w && (py as usize) < h {
                img.put_pixel(px as u32, py as u32, image::Rgb([40, 220, 60]));
            }
        }
    }
    let path = dir.join(format!("{}{suffix}.png", sample.id));
    img.save(&path)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[derive(Serialize)]
struct PromptRecord {
    points: Vec<[f32; 3]>,
    #[serde(rename = "box")]
    bbox: Option<[f32; 4]>,
}

fn prompt_record(p: &UserPrompt) -> PromptRecord {
    PromptRecord {
        points: p.points.iter().map(|&(x, y, l)| [x, y, l as f32]).collect(),
        bbox: p.bbox,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
}

/// Mean and (population) standard deviation; NaN for none.
pub fn stat(v: &[f64]) -> Stat {
    if v.is_empty() {
        return Stat {
            mean: f64::NAN,
            std: f64::NAN,
        };
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    Stat {
        mean,
        std: var.sqrt(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n_cases: usize,
    pub dice: Stat,
    pub iou: Stat,
    pub hd95: Stat,
    /// Cases where HD95 is undefined (empty prediction or target).
    pub hd95_missing: usize,
    pub dice_thresholds: Stat,
    pub per_class: BTreeMap<String, ClassSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassSummary {
    pub n: usize,
    pub dice: Stat,
    pub iou: Stat,
    pub hd95: Stat,
    pub hd95_missing: usize,
}

fn class_summary(rs: &[&CaseResult]) -> ClassSummary {
    let hd: Vec<f64> = rs.iter().filter_map(|r| r.hd95).collect();
    ClassSummary {
        n: rs.len(),
        dice: stat(&rs.iter().map(|r| r.dice).collect::<Vec<_>>()),
        iou: stat(&rs.iter().map(|r| r.iou).collect::<Vec<_>>()),
        hd95_missing: rs.len() - hd.len(),
        hd95: stat(&hd),
    }
}

/// Means over cases (a case's value is its mean over classes) and per class.
pub fn summarize(results: &[CaseResult]) -> Summary {
    let mut by_case: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    let mut by_class: BTreeMap<String, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        by_case.entry(&r.case).or_default().push(r);
        by_class.entry(r.class.clone()).or_default().push(r);
    }
    let case_mean = |f: &dyn Fn(&CaseResult) -> f64| -> Vec<f64> {
        by_case
            .values()
            .map(|rs| rs.iter().map(|r| f(r)).sum::<f64>() / rs.len() as f64)
            .collect()
    };
    let hd: Vec<f64> = results.iter().filter_map(|r| r.hd95).collect();
    Summary {
        n_cases: by_case.len(),
        dice: stat(&case_mean(&|r| r.dice)),
        iou: stat(&case_mean(&|r| r.iou)),
        hd95_missing: results.len() - hd.len(),
        hd95: stat(&hd),
        dice_thresholds: stat(&case_mean(&|r| r.dice_thresholds)),
        per_class: by_class
            .into_iter()
            .map(|(k, v)| (k, class_summary(&v)))
            .collect(),
    }
}

/// `per_case.csv` with columns case,class,dice,iou,hd95,prompt.
/// `per_case.csv` and `summary.json` in `out`; returns the summary.
pub fn write_reports(out: &Path, results: &[CaseResult]) -> Result<Summary> {
    write_per_case_csv(&out.join("per_case.csv"), results)?;
    let summary = summarize(results);
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )
    .with_context(|| format!("cannot write {}", out.join("summary.json").display()))?;
    Ok(summary)
}

pub fn write_per_case_csv(path: &Path, results: &[CaseResult]) -> Result<()> {
    let mut out = String::from("case,class,dice,iou,hd95,prompt\n");
    for r in results {
        let hd = r.hd95.map(|v| format!("{v:.4}")).unwrap_or_default();
        let prompt = r.prompt.replace('"', "\"\"");
        out.push_str(&format!(
            "{},{},{:.6},{:.6},{hd},\"{prompt}\"\n",
            r.case, r.class, r.dice, r.iou
        ));
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}
