//! `msa eval`: Dice, IoU and HD95 per case and class, on a dataset's test cases: 2D
//! images (`images`) or, with `--dataset decathlon`, volumes (`volumes`).

mod images;
mod volumes;

use super::ModelArgs;
use crate::data::layout::DatasetKind;
use crate::eval::evaluate::{write_reports, CaseResult, Summary};
use crate::model::Sam;
use anyhow::Result;
use indicatif::ProgressBar;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "folder")]
    pub dataset: DatasetKind,
    /// click, box, both (drawn from the ground truth, seeded) or a PROMPTS.json file
    /// mapping case ids to {"points": [[x, y, label], ...], "box": [x0, y0, x1, y1]}.
    #[arg(long, default_value = "click")]
    pub prompt: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
}

/// What evaluating images and evaluating volumes do differently; `run` does the rest.
trait Cases {
    /// How many cases, and what the bar calls them ("" for images, " volumes").
    fn len(&self) -> usize;
    fn unit(&self) -> &'static str;
    /// Every case scored by `sam`, its pictures written under `--out`, the bar advanced.
    fn evaluate(&self, sam: &Sam, args: &EvalArgs, bar: &ProgressBar) -> Result<Vec<CaseResult>>;
    /// The lines that end the command.
    fn print_summary(&self, summary: &Summary, args: &EvalArgs);
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let device = crate::runtime::device::default_device()?;
    let cases: Box<dyn Cases> = match args.dataset {
        DatasetKind::Decathlon => Box::new(volumes::Volumes::open(args)?),
        _ => Box::new(images::Images::open(args)?),
    };
    let loaded = args.model.load(&device)?;
    std::fs::create_dir_all(&args.out)?;
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(&format!(
        "eval [{{bar:30}}] {{pos}}/{{len}}{} {{per_sec}} eta {{eta}}",
        cases.unit()
    ))?);
    let results = cases.evaluate(&loaded.sam, args, &bar)?;
    bar.finish_and_clear();
    let summary = write_reports(&args.out, &results)?;
    cases.print_summary(&summary, args);
    Ok(())
}
