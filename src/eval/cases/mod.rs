//! A dataset's test cases scored by a model (what `msa eval` and `msa.evaluate` do): 2D
//! images (`images`) or, with `dataset` decathlon, volumes (`volumes`); Dice, IoU and HD95
//! per case and class, with pictures of the first cases.

mod images;
mod volumes;

use super::clicks::ClickTrace;
use super::evaluate::CaseResult;
use crate::data::layout::DatasetKind;
use crate::model::Sam;
use anyhow::Result;
use std::path::PathBuf;

/// Which cases, which prompts, and where the reports go.
#[derive(clap::Args, Debug, Clone)]
pub struct EvalOptions {
    /// The dataset's folder.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "folder")]
    pub dataset: DatasetKind,
    /// click, box, both, mixed (images: a kind drawn per case; all drawn from the ground
    /// truth, seeded) or a PROMPTS.json file
    /// mapping case ids to {"points": [[x, y, label], ...], "box": [x0, y0, x1, y1]}.
    #[arg(long, default_value = "click")]
    pub prompt: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where per_case.csv, summary.json and the pictures go.
    #[arg(long)]
    pub out: PathBuf,
    /// Overlays written (first N cases).
    #[arg(long, default_value_t = 16)]
    pub overlays: usize,
    /// Volumes: evaluate the last N training cases of dataset.json (sorted by id), or its
    /// `validation` list when N is not given and the list is there, else every case.
    #[arg(long)]
    pub holdout: Option<usize>,
    /// Volumes: which label values are classes, `1,2,6` or a JSON map like {"6": 1, "7": 1}
    /// (default: every label dataset.json names).
    #[arg(long)]
    pub labels: Option<String>,
    /// Volumes: a CT window `LO,HI` in HU or its name, or `mri` (default: from the
    /// dataset.json modality, else from the values).
    #[arg(long)]
    pub window: Option<String>,
    /// Volumes: the slices to evaluate on, axial, coronal or sagittal; each volume is
    /// turned into that canonical frame first.
    #[arg(long, default_value = "axial")]
    pub axis: crate::io::orientation::Axis,
    /// Volumes: the series (number or UID) of each case's DICOM study, where dataset.json's
    /// entry names none.
    #[arg(long)]
    pub series: Option<String>,
    /// Interactive evaluation (images): a seeded click, then corrective clicks at the
    /// largest error; Dice after each count given (`1,3,5`), NoC@85 and NoC@90, into
    /// clicks.csv and clicks.json.
    #[arg(long, value_delimiter = ',')]
    pub clicks: Vec<usize>,
    /// With --clicks: give each pass the clicks only, without the previous pass's logits as
    /// SAM's mask prompt.
    #[arg(long)]
    pub no_mask_feedback: bool,
}

/// What evaluating images and evaluating volumes do differently.
pub trait Cases: Send + Sync {
    /// How many cases.
    fn count(&self) -> usize;
    /// What a progress bar calls the cases: "" for images, " volumes".
    fn unit(&self) -> &'static str;
    /// A line on what is evaluated and how, where there is more to say than the count.
    fn header(&self) -> Option<String>;
    /// Every case scored by `sam`, its pictures written under `out`; `done(n)` after each.
    fn evaluate(
        &self,
        sam: &Sam,
        opts: &EvalOptions,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<CaseResult>>;
    /// Every case clicked through (`--clicks`), up to `most` clicks or more for NoC.
    fn click_traces(
        &self,
        _sam: &Sam,
        _opts: &EvalOptions,
        _most: usize,
        _done: &mut dyn FnMut(usize),
    ) -> Result<Vec<ClickTrace>> {
        anyhow::bail!("--clicks evaluates 2D images; volumes take --prompt click, box or both")
    }
}

/// The cases `opts` names, checked before any model is loaded.
pub fn open(opts: &EvalOptions) -> Result<Box<dyn Cases>> {
    Ok(match opts.dataset {
        DatasetKind::Decathlon => Box::new(volumes::Volumes::open(opts)?),
        _ => Box::new(images::Images::open(opts)?),
    })
}
