//! Scores another method's label volumes with msa's metrics: Dice, IoU and HD95 (mm) per
//! held-out case and class of a Decathlon dataset, written as `msa eval --dataset decathlon`
//! writes them (per_case.csv, summary.json). QUALITY.md scores nnU-Net's predictions this way.
//!
//!     cargo run --release --example score_volumes -- DATA HOLDOUT PRED_DIR OUT
//!
//! DATA is a Decathlon folder; its last HOLDOUT cases by id are scored, as `msa eval
//! --holdout` picks them. PRED_DIR holds `<case>.nii.gz`, one class value per voxel, on the
//! case's image grid.

use anyhow::{bail, Context, Result};
use msa::data::decathlon::{load_case, Decathlon, LabelMap, VolumeCase};
use msa::eval::evaluate::write_reports;
use msa::eval::volume::score_classes;
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, holdout, pred, out] = args.as_slice() else {
        bail!("usage: score_volumes DATA HOLDOUT PRED_DIR OUT");
    };
    let holdout: usize = holdout
        .parse()
        .with_context(|| format!("HOLDOUT `{holdout}`: expected a count of cases"))?;
    let ds = Decathlon::open(data.as_ref())?;
    let labels = LabelMap::identity(&ds.labels)?;
    let class_names = ds.class_names(&labels, false);
    let mut results = vec![];
    for case in ds.holdout(holdout).1 {
        // The prediction read as the case's label, so both come out in the frame msa scores in.
        let predicted = VolumeCase {
            label: PathBuf::from(pred).join(format!("{}.nii.gz", case.id)),
            ..case.clone()
        };
        let (image, truth) = load_case(&case)?;
        // load_case refuses a prediction whose grid is not the image's, naming both files.
        let (_, prediction) = load_case(&predicted)?;
        let classes = |v: &[f32]| labels.apply(v);
        results.extend(score_classes(
            &case.id,
            &classes(&prediction.volume.data),
            &classes(&truth.volume.data),
            &image.volume,
            &class_names,
            "none",
        ));
    }
    std::fs::create_dir_all(out)?;
    let s = write_reports(out.as_ref(), &results)?;
    println!(
        "{} cases: Dice {:.4} ± {:.4}, HD95 {:.2} ± {:.2} mm ({} undefined)",
        s.n_cases, s.dice.mean, s.dice.std, s.hd95.mean, s.hd95.std, s.hd95_missing
    );
    Ok(())
}
