//! `msa eval --dataset decathlon`: per-case and per-organ Dice, IoU and HD95 (mm) on
//! volumes, prompts drawn per slice from the labels.

use super::{Cases, EvalArgs};
use crate::data::decathlon::{Decathlon, LabelMap, VolumeCase};
use crate::data::prompts::PromptKind;
use crate::eval::evaluate::{CaseResult, Summary};
use crate::eval::volume::{evaluate_case, write_montage, VolumeEvalSpec};
use crate::io::Intensity;
use crate::model::Sam;
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;

pub(super) struct Volumes {
    ds: Decathlon,
    cases: Vec<VolumeCase>,
    kind: PromptKind,
    labels: LabelMap,
    class_names: Vec<String>,
    intensity: Option<Intensity>,
    /// How slices become 8-bit images, in words (`intensity.txt`).
    intensity_how: String,
}

impl Volumes {
    pub fn open(args: &EvalArgs) -> Result<Self> {
        let ds = Decathlon::open(&args.data)?;
        let cases = match (args.holdout, ds.validation.is_empty()) {
            (Some(n), _) => ds.holdout(n).1,
            (None, false) => ds.validation.clone(),
            (None, true) => ds.training.clone(),
        };
        if cases.is_empty() {
            bail!("{}: no cases to evaluate", args.data.display());
        }
        let kind = match args.prompt.as_str() {
            "click" => PromptKind::Click,
            "box" => PromptKind::Box,
            "both" => PromptKind::Both,
            other => bail!(
                "--prompt `{other}`: volumes take click, box or both (drawn per slice from the labels)"
            ),
        };
        let labels = match &args.labels {
            Some(s) => LabelMap::parse(s)?,
            None => LabelMap::identity(&ds.labels)?,
        };
        let class_names = ds.class_names(&labels, args.labels.is_some());
        let intensity = args.window.as_deref().map(Intensity::parse).transpose()?;
        let intensity_how = ds.intensity_how(intensity.as_ref());
        println!("{} volumes, classes {class_names:?}, prompts: one {:?} per class and slice; intensity {intensity_how}", cases.len(), kind);
        Ok(Self {
            ds,
            cases,
            kind,
            labels,
            class_names,
            intensity,
            intensity_how,
        })
    }
}

impl Cases for Volumes {
    fn len(&self) -> usize {
        self.cases.len()
    }

    fn unit(&self) -> &'static str {
        " volumes"
    }

    fn evaluate(&self, sam: &Sam, args: &EvalArgs, bar: &ProgressBar) -> Result<Vec<CaseResult>> {
        let spec = VolumeEvalSpec {
            labels: &self.labels,
            class_names: self.class_names.clone(),
            kind: self.kind,
            seed: args.seed,
            intensity: self.intensity,
            modality: self.ds.modality.clone(),
        };
        let montage_dir = args.out.join("montage");
        std::fs::create_dir_all(&montage_dir)
            .with_context(|| format!("cannot create {}", montage_dir.display()))?;
        std::fs::write(
            args.out.join("intensity.txt"),
            format!("{}\n", self.intensity_how),
        )?;
        let mut results = vec![];
        for (i, case) in self.cases.iter().enumerate() {
            let outcome = evaluate_case(sam, case, &spec, None)?;
            if i < args.overlays {
                write_montage(&montage_dir.join(format!("{}.png", case.id)), &outcome, 6)?;
            }
            results.extend(outcome.results);
            bar.set_position(i as u64 + 1);
        }
        Ok(results)
    }

    fn print_summary(&self, summary: &Summary, args: &EvalArgs) {
        println!("organ            n   Dice    IoU     HD95 (mm)");
        for (name, c) in &summary.per_class {
            println!(
                "{name:<15} {:>3}   {:.4}  {:.4}  {:.2} ({} undefined)",
                c.n, c.dice.mean, c.iou.mean, c.hd95.mean, c.hd95_missing
            );
        }
        println!(
            "mean over organs: Dice {:.4}, IoU {:.4}; {} volumes -> {}",
            summary.dice.mean,
            summary.iou.mean,
            summary.n_cases,
            args.out.display()
        );
    }
}
