//! `msa.train(...)`: the run folder `msa train` makes, with resume, progress told to a
//! Python callback, and Ctrl+C stopping it between steps.

use super::errors::{from_anyhow, value_error};
use super::image::describe;
use crate::train::config::TrainConfig;
use crate::train::step::{Observer, StepReport};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::Mutex;

/// The run configuration `msa train` would resolve: `TrainConfig::new` with `options` on
/// top, each named as its field (`epochs`, `lr_step`, `prompt`, `train`, `no_augment`, ...).
fn config(
    py: Python<'_>,
    (checkpoint, data, out): (PathBuf, PathBuf, PathBuf),
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<TrainConfig> {
    let cfg = TrainConfig::new(checkpoint, data, out);
    let mut fields = serde_json::to_value(&cfg).map_err(|e| from_anyhow(e.into()))?;
    let known: Vec<String> = fields
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let json = py.import("json")?;
    for (key, value) in options.into_iter().flat_map(|d| d.iter()) {
        let key: String = key.extract()?;
        let text: String = json
            .call_method1("dumps", (&value,))
            .and_then(|t| t.extract())
            .map_err(|_| value_error(format!("{key}: {} is not a JSON value", describe(&value))))?;
        let parsed: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| value_error(format!("{key}: {e}")))?;
        let (key, parsed) = match key.as_str() {
            "no_augment" => (
                "augment".to_string(),
                serde_json::json!(!parsed.as_bool().unwrap_or(false)),
            ),
            _ => (key, parsed),
        };
        if !known.contains(&key) {
            return Err(value_error(format!(
                "unknown training option `{key}`; the options are {}",
                known.join(", ")
            )));
        }
        if let Some(o) = fields.as_object_mut() {
            o.insert(key, parsed);
        }
    }
    let mut cfg: TrainConfig = serde_json::from_value(fields)
        .map_err(|e| value_error(format!("training options: {e}")))?;
    if !options.is_some_and(|o| o.contains("lr").unwrap_or(false)) {
        cfg.lr = crate::train::config::defaults::lr(cfg.train);
    }
    if cfg.three_d && options.is_some_and(|o| !o.contains("batch_size").unwrap_or(false)) {
        cfg.batch_size = 1; // as `msa train --3d`: a chunk of D slices is already a batch
    }
    Ok(cfg)
}

/// Calls the Python callback after every step and stops the run on Ctrl+C, keeping the
/// Python error to raise once the run has stopped.
struct Callback {
    callback: Option<Py<PyAny>>,
    raised: Mutex<Option<PyErr>>,
}

impl Observer for Callback {
    fn step(&self, r: &StepReport) -> anyhow::Result<()> {
        let outcome = Python::attach(|py| -> PyResult<()> {
            if let Some(cb) = &self.callback {
                cb.call1(py, (r.epoch, r.step, r.steps, r.loss, r.rate))?;
            }
            py.check_signals()
        });
        match outcome {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut raised = self.raised.lock().unwrap_or_else(|p| p.into_inner());
                *raised = Some(e);
                anyhow::bail!("stopped from Python")
            }
        }
    }
}

/// Trains as `msa train` does into the run folder `out`, and returns its history:
/// `{"out", "best_dice", "history": [{"epoch", "train_loss", "val_dice", "val_iou"}]}`.
/// `callback(epoch, step, steps, loss, images_per_s)` hears of every step.
#[pyfunction]
#[pyo3(signature = (checkpoint, data, out, resume=false, callback=None, device="cpu", **options))]
#[allow(clippy::too_many_arguments)] // Python's keyword arguments, one each
pub fn train<'py>(
    py: Python<'py>,
    checkpoint: PathBuf,
    data: PathBuf,
    out: PathBuf,
    resume: bool,
    callback: Option<Py<PyAny>>,
    device: &str,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let cfg = config(py, (checkpoint, data, out), options)?;
    let dev = super::model::device(device)?;
    let observer = Callback {
        callback,
        raised: Mutex::new(None),
    };
    let result = py.detach(|| crate::train::run::run_observed(&cfg, &dev, resume, &observer));
    if let Some(e) = observer
        .raised
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(e);
    }
    let result = result.map_err(from_anyhow)?;
    let history = PyList::empty(py);
    for r in &result.history {
        let row = PyDict::new(py);
        row.set_item("epoch", r.epoch)?;
        row.set_item("train_loss", r.train_loss)?;
        row.set_item("val_dice", r.val_dice)?;
        row.set_item("val_iou", r.val_iou)?;
        history.append(row)?;
    }
    let d = PyDict::new(py);
    d.set_item("out", cfg.out.display().to_string())?;
    d.set_item("best_dice", result.best_dice)?;
    d.set_item("history", history)?;
    Ok(d)
}
