//! `msa.Model`: a SAM (with adapters) loaded once; `embed` an image, `predict` masks from
//! clicks and boxes in the image's pixels, `predict_volume` labels from a prompt dict.

use super::errors::{from_anyhow, invalid, value_error};
use super::image::{describe, rgb_from_array};
use super::volume::Volume;
use crate::infer::volume::{segment_volume, SliceScaling, VolumePrompts};
use crate::infer::{Embedded, Prediction, Predictor};
use crate::io::orientation::{Axis, Reorientation};
use crate::io::prompt::UserPrompt;
use crate::model::precision::Precision;
use crate::model::Sam;
use crate::weights::{load_model, LoadOptions, Loaded, ModelFlags};
use numpy::{PyArray1, PyArray3, PyArrayMethods, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// A model: `Model("lite_medsam" | path, adapters=None, device="cpu", precision=None)`.
#[pyclass(module = "msa._msa", frozen)]
pub struct Model {
    pub sam: Sam,
    /// Told apart from other models, so that an embedding is used with its own model only.
    id: u64,
    preset: String,
    frozen_params: usize,
    adapter_params: usize,
    adapters_file: Option<String>,
}

/// An encoded image, for answering many prompts: `Model.embed(image)`.
#[pyclass(module = "msa._msa", frozen)]
pub struct Embedding {
    embedded: Embedded,
    /// The `Model` that made it.
    model: u64,
}

#[pymethods]
impl Embedding {
    /// (height, width) of the image it was made from.
    #[getter]
    fn image_size(&self) -> (usize, usize) {
        self.embedded.original_size
    }
}

/// The device a `device=` string names.
pub fn device(name: &str) -> PyResult<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        cuda if cuda == "cuda" || cuda.starts_with("cuda:") => cuda_device(cuda),
        other => Err(value_error(format!(
            "device `{other}`: expected \"cpu\" or \"cuda:N\""
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(name: &str) -> PyResult<candle_core::Device> {
    let ordinal = match name.strip_prefix("cuda:") {
        Some(n) => n
            .parse()
            .map_err(|_| value_error(format!("device `{name}`: expected cuda:N")))?,
        None => 0,
    };
    crate::runtime::device::cuda_device(ordinal).map_err(|e| from_anyhow(e.into()))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(name: &str) -> PyResult<candle_core::Device> {
    Err(value_error(format!(
        "device `{name}`: this build of msa has no CUDA support (build with --features cuda)"
    )))
}

fn precision(name: Option<&str>) -> PyResult<Precision> {
    use clap::ValueEnum;
    Precision::from_str(name.unwrap_or("f32"), true).map_err(|_| {
        value_error(format!(
            "precision `{}`: expected \"f32\", \"f16\" or \"bf16\"",
            name.unwrap_or_default()
        ))
    })
}

/// A prompt from the `points`, `labels` and `box` arguments.
fn user_prompt(
    points: Option<Vec<[f32; 2]>>,
    labels: Option<Vec<i64>>,
    bbox: Option<[f32; 4]>,
) -> PyResult<UserPrompt> {
    let points = points.unwrap_or_default();
    let labels = labels.unwrap_or_else(|| vec![1; points.len()]);
    if labels.len() != points.len() {
        return Err(value_error(format!(
            "{} points but {} labels",
            points.len(),
            labels.len()
        )));
    }
    let parts: Vec<[f32; 3]> = points
        .iter()
        .zip(&labels)
        .map(|(&[x, y], &l)| [x, y, l as f32])
        .collect();
    if parts
        .iter()
        .flatten()
        .chain(bbox.iter().flatten())
        .any(|v| !v.is_finite())
    {
        return Err(value_error(
            "prompt: points and boxes must be finite numbers",
        ));
    }
    UserPrompt::from_parts(&parts, bbox).map_err(invalid)
}

impl Model {
    fn embed_image(&self, py: Python<'_>, image: &Bound<'_, PyAny>) -> PyResult<Embedded> {
        let rgb = rgb_from_array(image)?;
        let sam = &self.sam;
        py.detach(|| {
            let mut p = Predictor::new(sam);
            p.set_image(&rgb)?;
            p.embedded()
                .ok_or_else(|| anyhow::anyhow!("the image gave no embedding"))
        })
        .map_err(from_anyhow)
    }

    /// The embedding of `image_or_e`: an `Embedding` of this model as it is, an array
    /// encoded now.
    fn embedded(&self, py: Python<'_>, image_or_e: &Bound<'_, PyAny>) -> PyResult<Embedded> {
        match image_or_e.cast::<Embedding>() {
            Ok(e) if e.get().model == self.id => Ok(e.get().embedded.clone()),
            Ok(_) => Err(value_error(
                "this embedding was made by another Model; embed the image with this one",
            )),
            Err(_) => self.embed_image(py, image_or_e),
        }
    }
}

type Masks<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>);

/// (masks, ious, logits) as arrays; with `squeeze`, the one mask's (H, W) arrays and float.
fn masks_to_numpy<'py>(
    py: Python<'py>,
    predictions: Vec<Prediction>,
    squeeze: bool,
) -> PyResult<Masks<'py>> {
    let logits = predictions
        .iter()
        .map(|p| p.masks_logits.clone())
        .collect::<Vec<_>>();
    let logits = candle_core::Tensor::cat(&logits, 0).map_err(|e| from_anyhow(e.into()))?;
    let (m, h, w) = logits.dims3().map_err(|e| from_anyhow(e.into()))?;
    let values = logits
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| from_anyhow(e.into()))?;
    let ious = predictions
        .iter()
        .map(|p| p.iou_values())
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(from_anyhow)?
        .concat();
    let masks: Vec<bool> = values.iter().map(|&v| v > 0.0).collect();
    let masks = PyArray1::from_vec(py, masks).reshape([m, h, w])?;
    let logits = PyArray1::from_vec(py, values).reshape([m, h, w])?;
    if squeeze && m == 1 {
        let iou = ious.first().copied().unwrap_or(f32::NAN);
        return Ok((
            masks.get_item(0)?,
            iou.into_pyobject(py)?.into_any(),
            logits.get_item(0)?,
        ));
    }
    Ok((
        masks.into_any(),
        PyArray1::from_vec(py, ious).into_any(),
        logits.into_any(),
    ))
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (model, adapters=None, device="cpu", precision=None, model_config=None))]
    pub fn new(
        py: Python<'_>,
        model: PathBuf,
        adapters: Option<PathBuf>,
        device: &str,
        precision: Option<&str>,
        model_config: Option<PathBuf>,
    ) -> PyResult<Self> {
        static MODELS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dev = self::device(device)?;
        let flags = ModelFlags::read(
            model_config.as_deref(),
            Some(self::precision(precision)?),
            &dev,
        )
        .map_err(invalid)?;
        let opts = LoadOptions {
            adapters_file: adapters.as_deref(),
            ..flags.load_options()
        };
        // The parameter store stays on this side (it is not Send); the model crosses back.
        let (sam, preset, frozen_params, adapter_params) = py
            .detach(|| {
                let loaded: Loaded = load_model(&model, &opts, &dev)?;
                let frozen = loaded.part_params.values().sum::<usize>();
                anyhow::Ok((loaded.sam, loaded.preset, frozen, loaded.adapter_params))
            })
            .map_err(from_anyhow)?;
        Ok(Self {
            sam,
            id: MODELS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            preset,
            frozen_params,
            adapter_params,
            adapters_file: adapters.map(|a| a.display().to_string()),
        })
    }

    /// backbone, preset, image_size, parameters, trainable (adapter) parameters, adapters.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let cfg = &self.sam.config;
        d.set_item("backbone", cfg.backbone_name())?;
        d.set_item("preset", &self.preset)?;
        d.set_item("image_size", cfg.img_size)?;
        d.set_item("parameters", self.frozen_params + self.adapter_params)?;
        d.set_item("adapter_parameters", self.adapter_params)?;
        let ad = serde_json::to_string(&self.sam.adapters).map_err(|e| from_anyhow(e.into()))?;
        let json = py.import("json")?;
        d.set_item("adapters", json.call_method1("loads", (ad,))?)?;
        d.set_item("adapters_file", &self.adapters_file)?;
        d.set_item(
            "precision",
            format!("{:?}", Precision::of(Some(self.sam.encoder_dtype))).to_lowercase(),
        )?;
        Ok(d)
    }

    /// The image's embedding: (H, W) or (H, W, 3), uint8, uint16 or float.
    fn embed(&self, py: Python<'_>, image: &Bound<'_, PyAny>) -> PyResult<Embedding> {
        Ok(Embedding {
            embedded: self.embed_image(py, image)?,
            model: self.id,
        })
    }

    /// Masks for a prompt in the image's pixels (x, y): `points` (N, 2) with `labels` (1
    /// foreground, 0 background; default all 1) and/or `box` (x0, y0, x1, y1); or `boxes`
    /// (N, 4), one mask each. Returns (mask bool (H, W), iou, logits float32 (H, W)), or
    /// with several masks (multimask, boxes) arrays of them (M, H, W), (M,), (M, H, W).
    #[pyo3(signature = (image_or_e, points=None, labels=None, r#box=None, boxes=None, multimask=false))]
    #[allow(clippy::too_many_arguments)]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        image_or_e: &Bound<'py, PyAny>,
        points: Option<Vec<[f32; 2]>>,
        labels: Option<Vec<i64>>,
        r#box: Option<[f32; 4]>,
        boxes: Option<Bound<'py, PyAny>>,
        multimask: bool,
    ) -> PyResult<Masks<'py>> {
        let several = boxes.is_some() || multimask;
        let sets = match boxes {
            Some(b) => {
                if points.is_some() || r#box.is_some() {
                    return Err(value_error("give either boxes= or points=/box=, not both"));
                }
                let b: PyReadonlyArray2<'py, f32> = py
                    .import("numpy")?
                    .call_method1("asarray", (&b, "float32"))
                    .and_then(|a| a.extract())
                    .map_err(|_| {
                        value_error(format!(
                            "boxes: expected an (N, 4) array of numbers, got {}",
                            describe(&b)
                        ))
                    })?;
                let a = b.as_array();
                if a.ncols() != 4 || a.nrows() == 0 {
                    return Err(value_error(format!(
                        "boxes: expected shape (N, 4), got {:?}",
                        a.shape()
                    )));
                }
                a.rows()
                    .into_iter()
                    .map(|r| user_prompt(None, None, Some([r[0], r[1], r[2], r[3]])))
                    .collect::<PyResult<Vec<_>>>()?
            }
            None => vec![user_prompt(points, labels, r#box)?],
        };
        if sets.iter().all(|s| s.points.is_empty() && s.bbox.is_none()) {
            return Err(value_error("no prompt: give points=, box= or boxes="));
        }
        let embedded = self.embedded(py, image_or_e)?;
        let (h, w) = embedded.original_size;
        for s in &sets {
            s.check_inside(w, h).map_err(invalid)?;
        }
        let sam = &self.sam;
        let predictions = py
            .detach(|| {
                let mut p = Predictor::new(sam);
                p.set_embedded(embedded);
                p.predict_batch(&sets, multimask)
            })
            .map_err(from_anyhow)?;
        masks_to_numpy(py, predictions, !several)
    }

    /// uint8 labels in the volume's voxel order from `prompts`, a dict with
    /// `msa predict-volume`'s JSON schema; `window` and `axis` as its --window and --axis.
    /// An `msa.Volume` is turned into the canonical frame of `axis` (prompts are in that
    /// frame); a bare array has no affine and is sliced as stored.
    #[pyo3(signature = (volume, prompts, window=None, axis="axial"))]
    fn predict_volume<'py>(
        &self,
        py: Python<'py>,
        volume: &Bound<'py, PyAny>,
        prompts: &Bound<'py, PyAny>,
        window: Option<&str>,
        axis: &str,
    ) -> PyResult<Bound<'py, PyArray3<u8>>> {
        let axis: Axis = axis.parse().map_err(invalid)?;
        let stored = match volume.cast::<Volume>() {
            Ok(v) => v.get().inner.volume.clone(),
            Err(_) => super::volume::from_array(volume)?,
        };
        let axis = if volume.cast::<Volume>().is_ok() {
            axis
        } else {
            Axis::Stored
        };
        let turn = Reorientation::of(&stored.affine, stored.dims, axis);
        let vol = turn.volume(&stored);
        let json = py.import("json")?;
        let text: String = json
            .call_method1("dumps", (prompts,))
            .and_then(|t| t.extract())
            .map_err(|_| {
                value_error(format!(
                    "prompts: expected a dict, got {}",
                    describe(prompts)
                ))
            })?;
        let prompts = VolumePrompts::parse(&text).map_err(invalid)?;
        let per_slice = prompts.per_slice(vol.dims[2]).map_err(invalid)?;
        let scaling = SliceScaling::of(&vol, window).map_err(invalid)?;
        let sam = &self.sam;
        let interrupted = std::sync::Mutex::new(None);
        let labels = py.detach(|| {
            segment_volume(sam, &vol, scaling.range, &per_slice, |_| {
                // Ctrl+C between slices stops the work; KeyboardInterrupt is raised below.
                Python::attach(|py| py.check_signals()).map_err(|e| {
                    *interrupted.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    anyhow::anyhow!("interrupted")
                })
            })
        });
        if let Some(e) = interrupted.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let labels = turn.undo(&labels.map_err(from_anyhow)?);
        super::volume::to_array(py, labels, stored.dims)
    }
}
