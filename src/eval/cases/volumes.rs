//! Volumes (the Decathlon layout): per-case and per-organ Dice, IoU and HD95 (mm), prompts
//! drawn per slice from the labels.

use super::{Cases, EvalOptions};
use crate::data::decathlon::{Decathlon, LabelMap, VolumeCase};
use crate::data::prompts::PromptKind;
use crate::eval::evaluate::CaseResult;
use crate::eval::volume::{evaluate_case, write_montage, VolumeEvalSpec};
use crate::io::Intensity;
use crate::model::Sam;
use anyhow::{bail, Context, Result};

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
    pub fn open(args: &EvalOptions) -> Result<Self> {
        let ds = Decathlon::open_along(&args.data, args.axis, args.series.as_deref())?;
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
    fn count(&self) -> usize {
        self.cases.len()
    }

    fn unit(&self) -> &'static str {
        " volumes"
    }

    fn header(&self) -> Option<String> {
        Some(format!(
            "{} volumes, classes {:?}, prompts: one {:?} per class and slice; intensity {}",
            self.cases.len(),
            self.class_names,
            self.kind,
            self.intensity_how
        ))
    }

    fn evaluate(
        &self,
        sam: &Sam,
        args: &EvalOptions,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<CaseResult>> {
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
            done(i + 1);
        }
        Ok(results)
    }
}
