//! Scores another method's masks with msa's metrics: Dice, IoU and HD95 per test case of a
//! folder dataset, written as `msa eval` writes them (per_case.csv, summary.json). QUALITY.md
//! scores nnU-Net's predictions this way.
//!
//!     cargo run --release --example score_masks -- DATA PRED_DIR OUT
//!
//! DATA is a folder dataset with split.json; PRED_DIR holds `<case>.png` (non-zero is
//! foreground) at each image's size.

use anyhow::{bail, Context, Result};
use msa::data::layout::{discover, DatasetKind};
use msa::data::sample::load_item;
use msa::eval::evaluate::{write_reports, CaseResult};
use msa::eval::metrics::{dice, hd95, iou};
use msa::io::image::load_gray;
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, pred, out] = args.as_slice() else {
        bail!("usage: score_masks DATA PRED_DIR OUT");
    };
    let splits = discover(DatasetKind::Folder, data.as_ref(), 0, 0.2)?;
    let mut results = vec![];
    for item in splits.eval_items() {
        let sample = load_item(&item)?;
        let (h, w) = sample.size();
        let path = PathBuf::from(pred).join(format!("{}.png", item.id));
        let mask = load_gray(&path).with_context(|| format!("case {}", item.id))?;
        if mask.dimensions() != (w as u32, h as u32) {
            bail!(
                "{}: {:?}, the image is {w}x{h}",
                path.display(),
                mask.dimensions()
            );
        }
        let binary: Vec<bool> = mask.as_raw().iter().map(|&v| v > 0).collect();
        let target = &sample.masks[0];
        results.push(CaseResult {
            case: item.id.clone(),
            class: "foreground".into(),
            dice: dice(&binary, target),
            iou: iou(&binary, target),
            hd95: hd95(&binary, target, &[h, w], &[1.0, 1.0]),
            dice_thresholds: dice(&binary, target),
            prompt: "none".into(),
        });
    }
    std::fs::create_dir_all(out)?;
    let s = write_reports(out.as_ref(), &results)?;
    println!(
        "{} cases: Dice {:.4} ± {:.4}, IoU {:.4} ± {:.4}, HD95 {:.2} ± {:.2} px ({} undefined)",
        s.n_cases,
        s.dice.mean,
        s.dice.std,
        s.iou.mean,
        s.iou.std,
        s.hd95.mean,
        s.hd95.std,
        s.hd95_missing
    );
    Ok(())
}
