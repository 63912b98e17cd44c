//! End to end: `msa predict --checkpoint lite_medsam --box ...` on real MRI slices and on a
//! larger image (shrunk by a non-integer factor) gives the mask of LiteMedSAM's official
//! pipeline (`tools/lite_medsam_official.py`) on at least 99% of pixels.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

#[derive(serde::Deserialize)]
struct Case {
    image: String,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

fn gray(path: &Path) -> Vec<bool> {
    let img = image::open(path).unwrap().to_luma8();
    img.pixels().map(|p| p.0[0] > 127).collect()
}

#[test]
fn predict_with_a_box_matches_the_official_pipeline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fixtures/lite_e2e");
    let cases: BTreeMap<String, Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 5);
    let out = tempfile::tempdir().unwrap();
    for (id, case) in &cases {
        let mask = out.path().join(format!("{id}.png"));
        let b = case.bbox.map(|v| v.to_string()).join(",");
        let run = Command::new(env!("CARGO_BIN_EXE_msa"))
            .current_dir(root)
            .args([
                "predict",
                "--checkpoint",
                "lite_medsam",
                "--image",
                &case.image,
            ])
            .args(["--box", &b, "--out"])
            .arg(&mask)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let (ours, golden) = (gray(&mask), gray(&dir.join(format!("{id}_mask.png"))));
        assert_eq!(ours.len(), golden.len(), "{id}: mask size");
        let same = ours.iter().zip(&golden).filter(|(a, b)| a == b).count();
        let agree = same as f64 / golden.len() as f64;
        let fg = golden.iter().filter(|&&g| g).count();
        assert!(fg > 0, "{id}: the official mask is empty");
        assert!(agree >= 0.99, "{id}: {:.4} of pixels agree", agree);
        eprintln!("{id}: {agree:.5} of pixels agree ({fg} foreground)");
    }
}
