//! Mixed prompts and corrective clicks through the `msa` binary on the tiny model: training
//! with both, and `msa eval --clicks` against `msa eval --prompt click`.

mod common;

use common::{fixture, tiny_train_cmd};
use msa::data::synthetic::write_folder_dataset;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn eval(data: &Path, out: &Path, args: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_msa"))
        .args(["eval", "--checkpoint"])
        .arg(fixture("sam_tiny.safetensors"))
        .arg("--model-config")
        .arg(fixture("sam_tiny.json"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--overlays", "0"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success());
}

/// case -> [(dice, iou)] per click, from clicks.csv.
fn traces(out: &Path) -> BTreeMap<String, Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(out.join("clicks.csv")).unwrap();
    let mut by_case: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let v = by_case.entry(f[0].to_string()).or_default();
        assert_eq!(f[1].parse::<usize>().unwrap(), v.len() + 1, "{line}");
        v.push((f[2].parse().unwrap(), f[3].parse().unwrap()));
    }
    by_case
}

#[test]
fn click_evaluation_starts_at_the_seeded_click_and_runs_to_its_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_folder_dataset(&data, 10, (64, 48), 5).unwrap();
    eval(&data, &dir.path().join("one"), &["--prompt", "click"]);
    eval(&data, &dir.path().join("clicks"), &["--clicks", "1,3"]);
    let per_case = std::fs::read_to_string(dir.path().join("one/per_case.csv")).unwrap();
    let traces = traces(&dir.path().join("clicks"));
    assert_eq!(traces.len(), per_case.lines().count() - 1);
    for line in per_case.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let trace = &traces[f[0]];
        // The first click is the one `--prompt click` draws, with no mask prompt.
        assert_eq!(format!("{:.6}", trace[0].0), f[2], "case {}", f[0]);
        // A case stops at 20 clicks, or past the largest count asked for with IoU 0.90, or
        // when nothing is left to correct.
        let (_, last_iou) = *trace.last().unwrap();
        assert!(
            trace.len() == 20 || (trace.len() >= 3 && last_iou >= 0.90) || last_iou == 1.0,
            "case {}: {trace:?}",
            f[0]
        );
    }
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("clicks/clicks.json")).unwrap(),
    )
    .unwrap();
    let counts: Vec<u64> = summary["at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["clicks"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 3]);
    let noc = summary["noc90"]["mean"].as_f64().unwrap();
    assert!((1.0..=20.0).contains(&noc), "{summary}");
    assert_eq!(summary["dice_curve"].as_array().unwrap().len(), 20);
    // Without the logits fed back, the first pass is the same and later passes differ.
    eval(
        &data,
        &dir.path().join("points"),
        &["--clicks", "1,3", "--no-mask-feedback"],
    );
    let points = self::traces(&dir.path().join("points"));
    assert!(traces.iter().all(|(c, t)| points[c][0] == t[0]));
    assert!(traces
        .iter()
        .any(|(c, t)| t.get(1).is_some() && points[c].get(1) != t.get(1)));
    let mean_first: f64 = traces.values().map(|t| t[0].0).sum::<f64>() / traces.len() as f64;
    let at1 = summary["at"][0]["dice"]["mean"].as_f64().unwrap();
    assert!((mean_first - at1).abs() < 1e-5, "{mean_first} vs {at1}");
}

#[test]
fn training_with_mixed_prompts_and_corrective_clicks_runs_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_folder_dataset(&data, 12, (64, 48), 7).unwrap();
    let out = dir.path().join("run");
    let status = tiny_train_cmd(&data, &out)
        .args(["--epochs", "2", "--batch-size", "3", "--seed", "1"])
        .args([
            "--prompt",
            "mixed",
            "--corrective-clicks",
            "3",
            "--samples",
            "0",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("prompt = \"mixed\""), "{config}");
    assert!(config.contains("corrective_clicks = 3"), "{config}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    for line in metrics.lines().skip(1) {
        let loss: f64 = line.split(',').nth(1).unwrap().parse().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{metrics}");
    }
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
}

#[test]
fn corrective_clicks_on_volumes_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let out = tiny_train_cmd(dir.path(), &dir.path().join("run"))
        .args(["--dataset", "decathlon", "--3d", "--corrective-clicks", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--corrective-clicks 2"), "{err}");
}
