//! `msa eval --dataset decathlon`: per-case and per-organ Dice, IoU and HD95 (mm) on
//! volumes, prompts drawn per slice from the labels.

use super::eval::EvalArgs;
use crate::data::decathlon::{Decathlon, LabelMap};
use crate::data::prompts::PromptKind;
use crate::eval::evaluate::write_reports;
use crate::eval::volume::{evaluate_case, write_montage, VolumeEvalSpec};
use crate::io::Intensity;
use anyhow::{bail, Context, Result};

pub fn run(args: &EvalArgs) -> Result<()> {
    let device = super::default_device()?;
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
    let how = match (&intensity, &ds.modality) {
        (Some(i), _) => format!("{i:?} (--window)"),
        (None, Some(m)) => format!(
            "{:?} (modality `{m}` in dataset.json)",
            Intensity::for_modality(m).0
        ),
        (None, None) => "chosen per volume from its values".to_string(),
    };
    println!("{} volumes, classes {class_names:?}, prompts: one {:?} per class and slice; intensity {how}", cases.len(), kind);
    let loaded = args.model.load(&device)?;
    let spec = VolumeEvalSpec {
        labels: &labels,
        class_names,
        kind,
        seed: args.seed,
        intensity,
        modality: ds.modality.clone(),
    };
    let montage_dir = args.out.join("montage");
    std::fs::create_dir_all(&montage_dir)
        .with_context(|| format!("cannot create {}", montage_dir.display()))?;
    std::fs::write(args.out.join("intensity.txt"), format!("{how}\n"))?;
    let bar = indicatif::ProgressBar::new(cases.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "eval [{bar:30}] {pos}/{len} volumes {per_sec} eta {eta}",
    )?);
    let mut results = vec![];
    for (i, case) in cases.iter().enumerate() {
        let outcome = evaluate_case(&loaded.sam, case, &spec, None)?;
        if i < args.overlays {
            write_montage(&montage_dir.join(format!("{}.png", case.id)), &outcome, 6)?;
        }
        results.extend(outcome.results);
        bar.set_position(i as u64 + 1);
    }
    bar.finish_and_clear();
    let summary = write_reports(&args.out, &results)?;
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
    Ok(())
}
