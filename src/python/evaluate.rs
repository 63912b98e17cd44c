//! `msa.evaluate(...)`: what `msa eval` computes and writes, returned as Python objects.

use super::errors::{from_anyhow, value_error};
use super::model::Model;
use crate::data::layout::DatasetKind;
use crate::eval::cases::{self, EvalOptions};
use crate::eval::clicks::{most_clicks, write_click_reports};
use crate::eval::evaluate::write_reports;
use pyo3::prelude::*;
use std::path::PathBuf;

/// Dice, IoU and HD95 per case and class of `checkpoint` (with `adapters`) on the test cases
/// of `data`, with per_case.csv, summary.json and pictures in `out`, as `msa eval` does.
/// Returns {"summary": {...}, "cases": [{"case", "class", "dice", "iou", "hd95", ...}]}.
/// With `clicks` (e.g. [1, 3, 5]) it clicks interactively as `msa eval --clicks` does and
/// returns {"summary": <clicks.json>, "cases": [{"case", "dice": [...], "iou": [...]}]},
/// one value per click.
#[pyfunction]
#[pyo3(signature = (checkpoint, data, out, adapters=None, dataset="folder", prompt="click",
    seed=0, overlays=16, holdout=None, labels=None, window=None, device="cpu", precision=None,
    axis="axial", clicks=None))]
#[allow(clippy::too_many_arguments)] // Python's keyword arguments, one each
pub fn evaluate<'py>(
    py: Python<'py>,
    checkpoint: PathBuf,
    data: PathBuf,
    out: PathBuf,
    adapters: Option<PathBuf>,
    dataset: &str,
    prompt: &str,
    seed: u64,
    overlays: usize,
    holdout: Option<usize>,
    labels: Option<String>,
    window: Option<String>,
    device: &str,
    precision: Option<&str>,
    axis: &str,
    clicks: Option<Vec<usize>>,
) -> PyResult<Bound<'py, PyAny>> {
    use clap::ValueEnum;
    let dataset = DatasetKind::from_str(dataset, true).map_err(|_| {
        value_error(format!(
            "dataset `{dataset}`: expected folder, isic, refuge or decathlon"
        ))
    })?;
    let opts = EvalOptions {
        data,
        dataset,
        prompt: prompt.to_string(),
        seed,
        out,
        overlays,
        holdout,
        labels,
        window,
        axis: axis.parse().map_err(|e| value_error(format!("{e:#}")))?,
        series: None,
        clicks: clicks.unwrap_or_default(),
        no_mask_feedback: false,
    };
    let cases = cases::open(&opts).map_err(from_anyhow)?;
    let model = Model::new(py, checkpoint, adapters, device, precision, None)?;
    let sam = &model.sam;

    if !opts.clicks.is_empty() {
        return click_report(py, cases.as_ref(), sam, &opts);
    }
    let (summary, results) = py
        .detach(|| {
            std::fs::create_dir_all(&opts.out)?;
            let results = cases.evaluate(sam, &opts, &mut |_| {})?;
            let summary = write_reports(&opts.out, &results)?;
            anyhow::Ok((summary, results))
        })
        .map_err(from_anyhow)?;
    let text = serde_json::to_string(&serde_json::json!({"summary": summary, "cases": results}))
        .map_err(|e| from_anyhow(e.into()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// `msa eval --clicks` for Python: the summary and each case's values per click.
fn click_report<'py>(
    py: Python<'py>,
    cases: &dyn cases::Cases,
    sam: &crate::model::Sam,
    opts: &EvalOptions,
) -> PyResult<Bound<'py, PyAny>> {
    let most = most_clicks(&opts.clicks).map_err(|e| value_error(format!("{e:#}")))?;
    let (summary, traces) = py
        .detach(|| {
            std::fs::create_dir_all(&opts.out)?;
            let traces = cases.click_traces(sam, opts, most, &mut |_| {})?;
            let summary = write_click_reports(&opts.out, &traces, &opts.clicks)?;
            anyhow::Ok((summary, traces))
        })
        .map_err(from_anyhow)?;
    let cases: Vec<serde_json::Value> = traces
        .iter()
        .map(|t| serde_json::json!({"case": t.case, "dice": t.dice, "iou": t.iou}))
        .collect();
    let text = serde_json::to_string(&serde_json::json!({"summary": summary, "cases": cases}))
        .map_err(|e| from_anyhow(e.into()))?;
    py.import("json")?.call_method1("loads", (text,))
}
