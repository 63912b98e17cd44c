//! `msa eval`: Dice, IoU and HD95 per case and class, on the test split.

use super::ModelArgs;
use crate::data::layout::{discover, DatasetKind};
use crate::data::prompts::PromptKind;
use crate::eval::evaluate::{evaluate, write_reports, PromptSource};
use crate::infer::UserPrompt;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

#[derive(serde::Deserialize)]
struct PromptEntry {
    #[serde(default)]
    points: Vec<[f32; 3]>,
    #[serde(default, rename = "box")]
    bbox: Option<[f32; 4]>,
}

fn prompt_source(arg: &str, seed: u64) -> Result<PromptSource> {
    let kind = match arg {
        "click" => Some(PromptKind::Click),
        "box" => Some(PromptKind::Box),
        "both" => Some(PromptKind::Both),
        _ => None,
    };
    if let Some(kind) = kind {
        return Ok(PromptSource::Drawn { kind, seed });
    }
    let path = Path::new(arg);
    if !path.exists() {
        bail!("--prompt `{arg}`: expected click, box, both or an existing PROMPTS.json");
    }
    let text = std::fs::read_to_string(path)?;
    let map: BTreeMap<String, PromptEntry> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"case\": {{\"points\": [[x,y,label]], \"box\": [x0,y0,x1,y1]}}}}",
            path.display()
        )
    })?;
    Ok(PromptSource::Given(
        map.into_iter()
            .map(|(k, e)| {
                let points = e.points.iter().map(|p| (p[0], p[1], p[2] as i64)).collect();
                (
                    k,
                    UserPrompt {
                        points,
                        bbox: e.bbox,
                    },
                )
            })
            .collect(),
    ))
}

pub fn run(args: &EvalArgs) -> Result<()> {
    if args.dataset == DatasetKind::Decathlon {
        return super::eval_volume::run(args);
    }
    let device = super::default_device()?;
    let loaded = args.model.load(&device)?;
    let splits = discover(args.dataset, &args.data, args.seed, 0.2)?;
    let items = splits.eval_items();
    if items.is_empty() {
        bail!("{}: no cases to evaluate", args.data.display());
    }
    let source = prompt_source(&args.prompt, args.seed)?;
    std::fs::create_dir_all(&args.out)?;
    let bar = indicatif::ProgressBar::new(items.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "eval [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
    )?);
    let overlays = args.out.join("overlays");
    let results = evaluate(
        &loaded.sam,
        &items,
        &splits.classes,
        &source,
        Some((&overlays, args.overlays)),
        None,
        |n| bar.set_position(n as u64),
    )?;
    bar.finish_and_clear();
    let summary = write_reports(&args.out, &results)?;
    println!(
        "{} cases: Dice {:.4} ± {:.4}, IoU {:.4} ± {:.4}, HD95 {:.2} ± {:.2} px ({} undefined)",
        summary.n_cases,
        summary.dice.mean,
        summary.dice.std,
        summary.iou.mean,
        summary.iou.std,
        summary.hd95.mean,
        summary.hd95.std,
        summary.hd95_missing
    );
    println!("wrote {}", args.out.display());
    Ok(())
}
