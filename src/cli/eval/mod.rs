//! `msa eval`: Dice, IoU and HD95 per case and class, on a dataset's test cases
//! (`eval::cases`), with a bar and the summary printed.

use super::ModelArgs;
use crate::data::layout::DatasetKind;
use crate::eval::cases::{self, EvalOptions};
use crate::eval::clicks::{most_clicks, write_click_reports, ClicksSummary};
use crate::eval::evaluate::{write_reports, Summary};
use anyhow::Result;
use indicatif::ProgressBar;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub eval: EvalOptions,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let device = crate::runtime::device::default_device()?;
    let opts = &args.eval;
    let cases = cases::open(opts)?;
    if let Some(line) = cases.header() {
        println!("{line}");
    }
    let loaded = args.model.load(&device)?;
    if opts.dataset != DatasetKind::Decathlon {
        super::warn_unused_depth(&loaded.sam, "these 2D images");
    }
    std::fs::create_dir_all(&opts.out)?;
    let bar = ProgressBar::new(cases.count() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(&format!(
        "eval [{{bar:30}}] {{pos}}/{{len}}{} {{per_sec}} eta {{eta}}",
        cases.unit()
    ))?);
    if !opts.clicks.is_empty() {
        let most = most_clicks(&opts.clicks)?;
        let traces =
            cases.click_traces(&loaded.sam, opts, most, &mut |n| bar.set_position(n as u64))?;
        bar.finish_and_clear();
        let summary = write_click_reports(&opts.out, &traces, &opts.clicks)?;
        print_clicks(&summary, opts);
        return Ok(());
    }
    let results = cases.evaluate(&loaded.sam, opts, &mut |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    let summary = write_reports(&opts.out, &results)?;
    match opts.dataset {
        DatasetKind::Decathlon => print_organs(&summary, opts),
        _ => print_cases(&summary, opts),
    }
    Ok(())
}

fn print_cases(summary: &Summary, opts: &EvalOptions) {
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
    println!("wrote {}", opts.out.display());
}

fn print_clicks(s: &ClicksSummary, opts: &EvalOptions) {
    println!("{} cases, corrective clicks:", s.n_cases);
    for a in &s.at {
        println!(
            "  {:>2} click(s): Dice {:.4} ± {:.4}, IoU {:.4} ± {:.4}",
            a.clicks, a.dice.mean, a.dice.std, a.iou.mean, a.iou.std
        );
    }
    println!(
        "  NoC@85 {:.2} ± {:.2} ({} of {} reached), NoC@90 {:.2} ± {:.2} ({} reached; cap {})",
        s.noc85.mean,
        s.noc85.std,
        s.reached85,
        s.n_cases,
        s.noc90.mean,
        s.noc90.std,
        s.reached90,
        s.noc_cap
    );
    println!("wrote {}", opts.out.display());
}

fn print_organs(summary: &Summary, opts: &EvalOptions) {
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
        opts.out.display()
    );
}
