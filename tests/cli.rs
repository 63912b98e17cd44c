//! The `msa` binary as users call it.

mod common;

use candle_core::Device;
use common::fixture;
use std::path::Path;
use std::process::{Command, Output};

fn msa<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msa"))
        .args(args)
        .output()
        .expect("msa runs")
}

fn ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = msa(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "msa {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn err<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = msa(args);
    assert!(!out.status.success(), "msa {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `CMD --checkpoint tests/fixtures/CKPT --model-config tests/fixtures/sam_tiny.json REST...`.
fn tiny(cmd: &str, ckpt: &str, rest: &[&str]) -> Vec<String> {
    tiny_with(cmd, ckpt, "sam_tiny.json", rest)
}

/// `tiny_with` on the tiny TinyViT fixture, which holds depth adapters.
fn tiny_vit(cmd: &str, rest: &[&str]) -> Vec<String> {
    tiny_with(cmd, "tinyvit_tiny.safetensors", "tinyvit_tiny.json", rest)
}

/// `CMD --checkpoint tests/fixtures/CKPT --model-config tests/fixtures/CONFIG REST...`.
fn tiny_with(cmd: &str, ckpt: &str, config: &str, rest: &[&str]) -> Vec<String> {
    let mut args = vec![
        cmd.to_string(),
        "--checkpoint".into(),
        s(&fixture(ckpt)),
        "--model-config".into(),
        s(&fixture(config)),
    ];
    args.extend(rest.iter().map(|a| a.to_string()));
    args
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn write_images(dir: &Path) -> Vec<std::path::PathBuf> {
    let (rgb, _) = msa::data::synthetic::lesion_image(100, 75, 3);
    let png = dir.join("rgb.png");
    rgb.save(&png).unwrap();
    let jpg = dir.join("rgb.jpg");
    rgb.save(&jpg).unwrap();
    let gray16 = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(100, 75, |x, y| {
        image::Luma([(x * 30 + y * 10) as u16 + 1000])
    });
    let png16 = dir.join("gray16.png");
    gray16.save(&png16).unwrap();
    let tif = dir.join("gray16.tif");
    gray16.save(&tif).unwrap();
    vec![png, jpg, png16, tif]
}

#[test]
fn predict_writes_mask_overlay_and_logits_for_every_image_kind() {
    let dir = tempfile::tempdir().unwrap();
    for img in write_images(dir.path()) {
        let stem = img.file_name().unwrap().to_string_lossy().replace('.', "_");
        let mask = dir.path().join(format!("{stem}_mask.png"));
        let overlay = dir.path().join(format!("{stem}_overlay.png"));
        let logits = dir.path().join(format!("{stem}.safetensors"));
        let out = ok(&tiny(
            "predict",
            "sam_tiny.pth",
            &[
                "--image",
                &s(&img),
                "--point",
                "50,30",
                "--point",
                "10,60,0",
                "--box",
                "20,10,80,60",
                "--out",
                &s(&mask),
                "--overlay",
                &s(&overlay),
                "--logits",
                &s(&logits),
            ],
        ));
        assert!(out.contains("mask 0: predicted IoU"), "{out}");
        let m = image::open(&mask).unwrap().to_luma8();
        assert_eq!(m.dimensions(), (100, 75));
        assert!(m.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
        assert_eq!(
            image::open(&overlay).unwrap().to_rgb8().dimensions(),
            (100, 75)
        );
        let t = candle_core::safetensors::load(&logits, &Device::Cpu).unwrap();
        assert_eq!(t["low_res_logits"].dims(), [1, 1, 32, 32]);
        assert_eq!(t["iou"].dims(), [1, 1]);
        assert_eq!(t["masks_logits"].dims(), [1, 1, 75, 100]);
    }
}

#[test]
fn multimask_writes_one_file_per_mask() {
    let dir = tempfile::tempdir().unwrap();
    let img = &write_images(dir.path())[0];
    let out = ok(&tiny(
        "predict",
        "sam_tiny.safetensors",
        &[
            "--image",
            &s(img),
            "--point",
            "50,30",
            "--multimask",
            "--out",
            &s(&dir.path().join("m.png")),
        ],
    ));
    for i in 0..3 {
        assert!(dir.path().join(format!("m_{i}.png")).exists());
        assert!(out.contains(&format!("mask {i}: predicted IoU")), "{out}");
    }
}

#[test]
fn cli_masks_equal_the_library_predictor() {
    let dir = tempfile::tempdir().unwrap();
    let img = &write_images(dir.path())[0];
    let logits = dir.path().join("l.safetensors");
    ok(&tiny(
        "predict",
        "sam_tiny.pth",
        &[
            "--image",
            &s(img),
            "--box",
            "20,10,80,60",
            "--out",
            &s(&dir.path().join("m.png")),
            "--logits",
            &s(&logits),
        ],
    ));
    let cfg = msa::model::SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let sam = msa::weights::load_sam(&fixture("sam_tiny.pth"), Some(&cfg), None, &Device::Cpu)
        .unwrap()
        .sam;
    let mut p = msa::infer::Predictor::new(&sam);
    p.set_image(&image::open(img).unwrap().to_rgb8()).unwrap();
    let prompt = msa::io::prompt::UserPrompt {
        points: vec![],
        bbox: Some([20.0, 10.0, 80.0, 60.0]),
    };
    let pred = p.predict(&prompt, false).unwrap();
    let t = candle_core::safetensors::load(&logits, &Device::Cpu).unwrap();
    let d = common::max_abs_diff(&t["masks_logits"].squeeze(0).unwrap(), &pred.masks_logits);
    assert_eq!(d, 0.0);
}

/// `--precision f16` runs the encoder in f16 and gives the f32 logits within the tiny
/// model's f16 tolerance (tests/fixtures/README.md); bf16 on the CPU is refused.
#[test]
fn predict_in_reduced_precision_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let img = &write_images(dir.path())[0];
    let logits = |precision: &str| {
        let file = dir.path().join(format!("{precision}.safetensors"));
        let args = [
            "--image",
            &s(img),
            "--box",
            "20,10,80,60",
            "--out",
            &s(&dir.path().join(format!("{precision}.png"))),
            "--logits",
            &s(&file),
            "--precision",
            precision,
        ];
        ok(&tiny("predict", "sam_tiny.pth", &args));
        candle_core::safetensors::load(&file, &Device::Cpu).unwrap()["masks_logits"].clone()
    };
    let (full, half) = (logits("f32"), logits("f16"));
    let e = common::relative_error(&half, &full);
    eprintln!("f16 logits relative error {e:e}");
    assert!(e > 0.0 && e < 1e-2, "f16 logits relative error {e:e}");
    let out = s(&dir.path().join("bf16.png"));
    let args = [
        "--image",
        &s(img),
        "--box",
        "20,10,80,60",
        "--out",
        &out,
        "--precision",
        "bf16",
    ];
    let e = err(&tiny("predict", "sam_tiny.pth", &args));
    assert!(e.contains("needs a GPU"), "{e}");
}

#[test]
fn bad_prompts_and_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = s(&write_images(dir.path())[0]);
    let ckpt = s(&fixture("sam_tiny.pth"));
    let out = s(&dir.path().join("m.png"));
    let predict_err = |image: &str, prompt: &[&str]| {
        let mut args = vec!["--image", image, "--out", &out];
        args.extend_from_slice(prompt);
        err(&tiny("predict", "sam_tiny.pth", &args))
    };
    let e = predict_err(&img, &["--point", "30,90"]);
    assert!(e.contains("outside the 100x75 image"), "{e}");
    let e = predict_err(&img, &["--box", "80,10,20,60"]);
    assert!(e.contains("x0 < x1"), "{e}");
    let e = predict_err(&img, &["--point", "3,4,7"]);
    assert!(e.contains("must be 1 (foreground) or 0"), "{e}");
    let missing = s(&dir.path().join("nope.png"));
    let e = predict_err(&missing, &["--point", "3,4"]);
    assert!(e.contains("nope.png"), "{e}");
    let e = err(&["info", &ckpt]);
    assert!(e.contains("--model-config"), "{e}");
}

#[test]
fn info_reports_architecture_and_parameters() {
    let out = ok(&[
        "info",
        &s(&fixture("sam_tiny.pth")),
        "--config",
        &s(&fixture("sam_tiny.json")),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["architecture"], "custom");
    assert_eq!(v["image_size"], 128);
    // Parameters as PyTorch counts them: the Fourier matrix (2 x 16) is a buffer.
    assert_eq!(v["total_parameters"], 306915);
    assert_eq!(v["adapters"]["present"], false);
    let out = ok(&[
        "info",
        &s(&fixture("msa_tiny.safetensors")),
        "--config",
        &s(&fixture("sam_tiny.json")),
    ]);
    assert!(
        out.contains("adapters") && out.contains("48 tensors"),
        "{out}"
    );
}

#[test]
fn convert_then_predict_from_the_converted_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.safetensors");
    ok(&["convert", &s(&fixture("sam_tiny.pth")), &s(&out)]);
    let info = ok(&["info", &s(&out), "--config", &s(&fixture("sam_tiny.json"))]);
    assert!(info.contains("306915"), "{info}");
}

#[test]
fn bench_prints_json_with_timings() {
    for part in ["encoder", "decoder"] {
        let out = ok(&[
            "bench",
            part,
            "--config",
            &s(&fixture("sam_tiny.json")),
            "--size",
            "128",
            "--runs",
            "2",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert!(v["median_ms"].as_f64().unwrap() > 0.0);
        assert!(v["min_ms"].as_f64().unwrap() <= v["median_ms"].as_f64().unwrap());
    }
}

/// `bench train-step --lora R` trains LoRA alone: R x (64 + 3 x 64) in each of the tiny
/// ViT's 4 blocks; rank 0 is refused.
#[test]
fn bench_train_step_with_lora_trains_only_lora() {
    let config = s(&fixture("sam_tiny.json"));
    let step = |rank: &str| {
        let args = ["bench", "train-step", "--config", &config, "--size", "128"];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--runs", "1", "--json", "--lora", rank].map(String::from));
        args
    };
    let out = ok(&step("2"));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["trainable"], 2 * (64 + 3 * 64) * 4, "{v}");
    assert_eq!(v["lora"], 2, "{v}");
    assert!(err(&step("0")).contains("--lora 0"));
}

/// The demo's whole path on a few cases and one epoch (the full demo runs for minutes):
/// LiteMedSAM, the shipped MRI slices, both evaluations, training, the table, the picture
/// and the JSON line.
#[test]
fn demo_runs_end_to_end_on_a_few_real_slices() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&[
        "demo",
        "--out",
        &s(dir.path()),
        "--epochs",
        "1",
        "--train-cases",
        "4",
        "--test-cases",
        "2",
    ]);
    let last = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "frozen_dice",
        "adapted_dice",
        "trainable_percent",
        "seconds",
    ] {
        assert!(v[key].as_f64().is_some(), "{key} in {last}");
    }
    let pct = v["trainable_percent"].as_f64().unwrap();
    assert!(pct > 0.5 && pct < 20.0, "{pct}");
    assert!(
        out.contains("frozen Dice") && out.contains("click") && out.contains("box"),
        "{out}"
    );
    for f in [
        "comparison.png",
        "run/curves.png",
        "run/adapters_last.safetensors",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
}

/// `msa demo --3d` on one training and one held-out hippocampus volume: LiteMedSAM frozen
/// and with depth adapters, per-class Dice for clicks and boxes, the picture, the run
/// folder, and the same JSON keys as the 2D demo.
#[test]
fn demo_3d_runs_end_to_end_on_a_real_volume() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&[
        "demo",
        "--3d",
        "--out",
        &s(dir.path()),
        "--epochs",
        "1",
        "--chunk",
        "2",
        "--train-cases",
        "1",
        "--test-cases",
        "1",
    ]);
    let last = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "frozen_dice",
        "adapted_dice",
        "trainable_percent",
        "seconds",
    ] {
        assert!(v[key].as_f64().is_some(), "{key} in {last}");
    }
    // A pretrained model with a tight box per slice: well above chance on real data.
    let frozen_box = out
        .lines()
        .find(|l| l.starts_with("box") && l.contains("mean"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|d| d.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no box row in {out}"));
    assert!(frozen_box > 0.5, "{out}");
    assert!(
        out.contains("Anterior") && out.contains("Posterior"),
        "{out}"
    );
    for f in [
        "comparison3d.png",
        "run3d/curves.png",
        "run3d/adapters_last.safetensors",
        "run3d/intensity.txt",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let meta = std::fs::read_to_string(dir.path().join("run3d/config.toml")).unwrap();
    assert!(
        meta.contains("three_d = true") && meta.contains("chunk = 2"),
        "{meta}"
    );
}

#[test]
fn other_input_sizes_resize_position_tables() {
    let dir = tempfile::tempdir().unwrap();
    let img = &write_images(dir.path())[0];
    let logits = dir.path().join("l.safetensors");
    ok(&tiny(
        "predict",
        "sam_tiny.pth",
        &[
            "--image-size",
            "160",
            "--image",
            &s(img),
            "--point",
            "50,30",
            "--out",
            &s(&dir.path().join("m.png")),
            "--logits",
            &s(&logits),
        ],
    ));
    let t = candle_core::safetensors::load(&logits, &Device::Cpu).unwrap();
    assert_eq!(t["low_res_logits"].dims(), [1, 1, 40, 40]);
}

#[test]
fn train_eval_and_predict_with_adapters_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 10, (64, 48), 2).unwrap();
    let run = dir.path().join("run");
    let (ckpt, cfg) = (
        s(&fixture("sam_tiny.safetensors")),
        s(&fixture("sam_tiny.json")),
    );
    let out = ok(&tiny(
        "train",
        "sam_tiny.safetensors",
        &[
            "--data",
            &s(&data),
            "--dataset",
            "folder",
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "--prompt",
            "both",
            "--out",
            &s(&run),
            "--seed",
            "4",
        ],
    ));
    assert!(out.contains("epoch   2"), "{out}");
    let toml = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        toml.contains("epochs = 2") && toml.contains("prompt = \"both\""),
        "{toml}"
    );
    // A second run into the same folder needs --resume.
    let e = err(&["train", "--run-config", &s(&run.join("config.toml"))]);
    assert!(e.contains("--resume"), "{e}");
    let out = ok(&[
        "train",
        "--run-config",
        &s(&run.join("config.toml")),
        "--epochs",
        "3",
        "--resume",
    ]);
    assert!(out.contains("epoch   3"), "{out}");
    // Settings that change what trains are refused by name, before any state is read.
    let e = err(&[
        "train",
        "--run-config",
        &s(&run.join("config.toml")),
        "--epochs",
        "4",
        "--adapter-ratio",
        "0.5",
        "--resume",
    ]);
    assert!(
        e.contains("--adapter-ratio 0.5 (the run used 0.125)") && e.contains("--run-config"),
        "{e}"
    );
    // Without the folder's config.toml the saved shapes still catch it, by tensor name.
    let saved = dir.path().join("saved.toml");
    std::fs::rename(run.join("config.toml"), &saved).unwrap();
    let e = err(&[
        "train",
        "--run-config",
        &s(&saved),
        "--epochs",
        "4",
        "--adapter-ratio",
        "0.5",
        "--resume",
    ]);
    assert!(e.contains("`param/") && e.contains("has shape"), "{e}");
    std::fs::rename(&saved, run.join("config.toml")).unwrap();

    let adapters = s(&run.join("adapters_best.safetensors"));
    let info = ok(&["info", &ckpt, "--config", &cfg, "--adapters", &adapters]);
    assert!(
        info.contains("trainable") && info.contains("decoder true"),
        "{info}"
    );

    let ev = dir.path().join("eval");
    let out = ok(&tiny(
        "eval",
        "sam_tiny.safetensors",
        &[
            "--adapters",
            &adapters,
            "--data",
            &s(&data),
            "--dataset",
            "folder",
            "--prompt",
            "box",
            "--out",
            &s(&ev),
        ],
    ));
    assert!(out.contains("cases: Dice"), "{out}");
    let csv = std::fs::read_to_string(ev.join("per_case.csv")).unwrap();
    assert!(csv.starts_with("case,class,dice,iou,hd95,prompt\n"));
    assert_eq!(
        csv.lines().count(),
        11,
        "all 10 cases (no test split): {csv}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["n_cases"], 10);
    assert!(summary["dice"]["mean"].is_number() && summary["per_class"]["foreground"].is_object());
    assert!(ev.join("overlays").read_dir().unwrap().count() >= 10);

    let prompts = dir.path().join("prompts.json");
    std::fs::write(
        &prompts,
        r#"{"case000": {"points": [[30, 20, 1]]}, "case001": {"box": [10, 10, 40, 30]}}"#,
    )
    .unwrap();
    let out = ok(&tiny(
        "eval",
        "sam_tiny.safetensors",
        &[
            "--data",
            &s(&data),
            "--prompt",
            &s(&prompts),
            "--out",
            &s(&dir.path().join("eval2")),
        ],
    ));
    assert!(out.contains("2 cases"), "{out}");

    let img = s(&data.join("images/case003.png"));
    let out = ok(&tiny(
        "predict",
        "sam_tiny.safetensors",
        &[
            "--adapters",
            &adapters,
            "--image",
            &img,
            "--point",
            "30,20",
            "--out",
            &s(&dir.path().join("m.png")),
        ],
    ));
    assert!(out.contains("mask 0"), "{out}");
}

/// `--train all` writes a whole model: it loads as the checkpoint, and `--adapters` says so.
#[test]
fn fully_fine_tuned_files_load_as_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 6, (64, 48), 5).unwrap();
    let run = dir.path().join("run");
    let data_args = ["--data", &s(&data), "--dataset", "folder"];
    let mut args = data_args.to_vec();
    let run_s = s(&run);
    args.extend(["--train", "all", "--epochs", "1", "--out", &run_s]);
    ok(&tiny("train", "sam_tiny.safetensors", &args));
    let tuned = s(&run.join("adapters_best.safetensors"));

    let mut args = data_args.to_vec();
    let ev = s(&dir.path().join("eval"));
    args.extend(["--adapters", &tuned, "--out", &ev]);
    let e = err(&tiny("eval", "sam_tiny.safetensors", &args));
    assert!(
        e.contains("--train all") && e.contains(&format!("--checkpoint {tuned}")),
        "{e}"
    );

    let mut args = vec![
        "eval".to_string(),
        "--checkpoint".into(),
        tuned,
        "--model-config".into(),
        s(&fixture("sam_tiny.json")),
        "--out".into(),
        ev,
    ];
    args.extend(data_args.iter().map(|a| a.to_string()));
    let out = ok(&args);
    assert!(out.contains("6 cases: Dice"), "{out}");
}

#[test]
fn training_stops_before_it_starts_on_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 6, (64, 48), 2).unwrap();
    std::fs::write(data.join("images/case002.png"), b"broken").unwrap();
    let run = dir.path().join("run");
    let (data, run_dir) = (s(&data), s(&run));
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["--data", &data, "--epochs", "1", "--out", &run_dir];
        v.extend_from_slice(extra);
        tiny("train", "sam_tiny.safetensors", &v)
    };
    let e = err(&args(&[]));
    assert!(e.contains("case002") && e.contains("--skip-bad"), "{e}");
    assert!(
        !run.join("state_last.safetensors").exists(),
        "nothing trained"
    );
    let out = msa(&args(&["--skip-bad"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipping"));
}

#[test]
fn classes_write_one_mask_per_class() {
    let dir = tempfile::tempdir().unwrap();
    let img = &write_images(dir.path())[0];
    let (img, out) = (s(img), s(&dir.path().join("c.png")));
    let base = ["--image", &img, "--point", "50,30", "--out", &out];
    let mut args = base.to_vec();
    args.extend(["--classes", "2"]);
    let out = ok(&tiny("predict", "sam_tiny.pth", &args));
    assert!(
        dir.path().join("c_0.png").exists() && dir.path().join("c_1.png").exists(),
        "{out}"
    );
    let mut args = base.to_vec();
    args.extend(["--classes", "5"]);
    assert!(err(&tiny("predict", "sam_tiny.pth", &args)).contains("1 to 4 classes"));
}

/// A 40 x 30 x 6 float32 NIfTI with a bright block in slices 1..=4, and a prompt file:
/// class 1 as a 3D box over slices 1..=3 (slice 2 with its own box), class 2 as a click on
/// slice 4.
fn write_volume_case(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use ndarray::ShapeBuilder;
    let vol = ndarray::Array3::from_shape_fn((40, 30, 6).f(), |(x, y, k)| {
        let inside = (10..30).contains(&x) && (8..22).contains(&y) && (1..=4).contains(&k);
        if inside {
            300.0f32 + x as f32
        } else {
            20.0 + y as f32
        }
    });
    let header = nifti::NiftiHeader {
        sform_code: 1,
        srow_x: [0.9, 0.0, 0.0, -10.0],
        srow_y: [0.0, 0.9, 0.0, 5.0],
        srow_z: [0.0, 0.0, 3.0, 0.0],
        ..Default::default()
    };
    let image = dir.join("vol.nii.gz");
    nifti::writer::WriterOptions::new(&image)
        .reference_header(&header)
        .write_nifti(&vol)
        .unwrap();
    let prompts = dir.join("prompts.json");
    let json = serde_json::json!({"classes": {
        "1": {"box3d": [8, 6, 1, 32, 24, 3], "boxes": {"2": [10, 8, 30, 22]}},
        "2": {"points": {"4": [[20, 15, 1], [2, 2, 0]]}},
    }});
    std::fs::write(&prompts, json.to_string()).unwrap();
    (image, prompts)
}

#[test]
fn predict_volume_writes_labels_on_the_input_grid() {
    let dir = tempfile::tempdir().unwrap();
    let (image, prompts) = write_volume_case(dir.path());
    let out = dir.path().join("out/seg.nii.gz");
    let overlays = dir.path().join("overlays");
    // The stored order, so that slice 4 is the array's (tests/orientation.rs covers the
    // canonical frame).
    let printed = ok(&tiny(
        "predict-volume",
        "sam_tiny.pth",
        &[
            "--image",
            &s(&image),
            "--axis",
            "stored",
            "--prompts",
            &s(&prompts),
            "--out",
            &s(&out),
            "--overlay-dir",
            &s(&overlays),
        ],
    ));
    assert!(
        printed.contains("MRI percentile scaling") && printed.contains("4 prompted slices"),
        "{printed}"
    );
    let input = msa::io::nifti::read(&image).unwrap();
    let seg = msa::io::nifti::read(&out).unwrap();
    assert_eq!(seg.volume.dims, [40, 30, 6]);
    assert_eq!(seg.volume.affine, input.volume.affine);
    let n = 40 * 30;
    for k in [0, 5] {
        assert!(
            seg.volume.slice(k).unwrap().iter().all(|&v| v == 0.0),
            "slice {k} was not prompted"
        );
    }
    // Slice 4 equals what the library's Predictor gives for the same click pair.
    let cfg = msa::model::SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let sam = msa::weights::load_sam(&fixture("sam_tiny.pth"), Some(&cfg), None, &Device::Cpu)
        .unwrap()
        .sam;
    let range = msa::io::Intensity::MRI.range(&input.volume);
    let mut p = msa::infer::Predictor::new(&sam);
    p.set_image(&msa::io::volume::slice_image(&input.volume, 4, range).unwrap())
        .unwrap();
    let prompt = msa::io::prompt::UserPrompt {
        points: vec![(20.0, 15.0, 1), (2.0, 2.0, 0)],
        bbox: None,
    };
    let mask = p.predict(&prompt, false).unwrap().binary_mask(0).unwrap();
    let got: Vec<bool> = seg.volume.data[4 * n..5 * n]
        .iter()
        .map(|&v| v == 2.0)
        .collect();
    assert_eq!(got, mask);
    for k in 1..=4 {
        assert!(
            overlays.join(format!("slice_{k:04}.png")).is_file(),
            "overlay {k}"
        );
    }
    assert!(!overlays.join("slice_0000.png").exists());
}

#[test]
fn predict_volume_names_bad_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = write_volume_case(dir.path());
    let run = |json: serde_json::Value| {
        let prompts = dir.path().join("bad.json");
        std::fs::write(&prompts, json.to_string()).unwrap();
        err(&tiny(
            "predict-volume",
            "sam_tiny.pth",
            &[
                "--image",
                &s(&image),
                "--prompts",
                &s(&prompts),
                "--out",
                &s(&dir.path().join("x.nii")),
            ],
        ))
    };
    let e = run(serde_json::json!({"classes": {"1": {"boxes": {"9": [1, 1, 5, 5]}}}}));
    assert!(e.contains("slice 9") && e.contains("6 slices"), "{e}");
    let e = run(serde_json::json!({"classes": {"1": {"points": {"2": [[35, 45, 1]]}}}}));
    assert!(
        e.contains("slice 2") && e.contains("outside the 40x30 image"),
        "{e}"
    );
    let e = run(serde_json::json!({"classes": {"0": {"points": {"2": [[5, 5, 1]]}}}}));
    assert!(e.contains("class `0`"), "{e}");
    let e = run(serde_json::json!({"labels": {}}));
    assert!(e.contains("bad.json") && e.contains("\"classes\""), "{e}");
}

/// A Decathlon folder of two 32 x 24 x 4 volumes with two labelled blocks each.
fn write_decathlon(dir: &Path) {
    use ndarray::ShapeBuilder;
    std::fs::create_dir_all(dir.join("imagesTr")).unwrap();
    std::fs::create_dir_all(dir.join("labelsTr")).unwrap();
    let header = nifti::NiftiHeader {
        pixdim: [1.0, 0.7, 0.7, 2.0, 0.0, 0.0, 0.0, 0.0],
        ..Default::default()
    };
    let mut training = vec![];
    for i in 0..2 {
        let label = |x: usize, y: usize, k: usize| -> u8 {
            if (1..=2).contains(&k) && (4..14).contains(&x) && (5..15).contains(&y) {
                1
            } else if (1..=3).contains(&k) && (18..28).contains(&x) && (6..18).contains(&(y + i)) {
                2
            } else {
                0
            }
        };
        let img = ndarray::Array3::from_shape_fn((32, 24, 4).f(), |(x, y, k)| {
            -900.0f32 + 600.0 * label(x, y, k) as f32 + y as f32
        });
        let lab = ndarray::Array3::from_shape_fn((32, 24, 4).f(), |(x, y, k)| label(x, y, k));
        let name = format!("vol_{i}.nii.gz");
        for (sub, write) in [("imagesTr", true), ("labelsTr", false)] {
            let w = nifti::writer::WriterOptions::new(dir.join(sub).join(&name))
                .reference_header(&header);
            if write {
                w.write_nifti(&img).unwrap();
            } else {
                w.write_nifti(&lab).unwrap();
            }
        }
        training.push(serde_json::json!({"image": format!("./imagesTr/{name}"), "label": format!("./labelsTr/{name}")}));
    }
    let json = serde_json::json!({
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "spleen"},
        "training": training,
    });
    std::fs::write(dir.join("dataset.json"), json.to_string()).unwrap();
}

#[test]
fn eval_on_volumes_reports_per_organ_dice_and_hd95_in_mm() {
    let dir = tempfile::tempdir().unwrap();
    write_decathlon(dir.path());
    let out = dir.path().join("eval");
    let printed = ok(&tiny(
        "eval",
        "sam_tiny.pth",
        &[
            "--dataset",
            "decathlon",
            "--data",
            &s(dir.path()),
            "--prompt",
            "box",
            "--out",
            &s(&out),
        ],
    ));
    assert!(
        printed.contains("liver")
            && printed.contains("spleen")
            && printed.contains("mean over organs"),
        "{printed}"
    );
    assert!(printed.contains("modality `CT`"), "{printed}");
    let csv = std::fs::read_to_string(out.join("per_case.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 2, "{csv}");
    assert!(
        csv.contains("vol_0,liver") && csv.contains("vol_1,spleen"),
        "{csv}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["n_cases"], 2);
    assert_eq!(summary["per_class"]["liver"]["n"], 2);
    assert!(out.join("montage/vol_0.png").is_file());
    // One held out, label 2 alone (renamed: remapped labels have no dataset.json names).
    let out2 = dir.path().join("eval2");
    let printed = ok(&tiny(
        "eval",
        "sam_tiny.pth",
        &[
            "--dataset",
            "decathlon",
            "--data",
            &s(dir.path()),
            "--prompt",
            "click",
            "--holdout",
            "1",
            "--labels",
            "2",
            "--out",
            &s(&out2),
        ],
    ));
    let csv = std::fs::read_to_string(out2.join("per_case.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}\n{printed}");
    assert!(
        csv.starts_with("case,class") && csv.contains("vol_1,class 1"),
        "{csv}"
    );
}

#[test]
fn volume_prompts_come_one_per_class_and_labelled_slice() {
    use msa::data::prompts::PromptKind;
    // Prompts from labels: one per class on each slice that holds it, none elsewhere.
    let mut classes = vec![0u8; 4 * 3 * 3];
    classes[0] = 1; // slice 0
    classes[12 + 5] = 2; // slice 1
    classes[12 + 6] = 1;
    let p =
        msa::eval::volume::prompts_from_labels(&classes, [4, 3, 3], 2, PromptKind::Click, 0, "c");
    assert_eq!(p.keys().copied().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(p[&1].iter().map(|(c, _)| *c).collect::<Vec<_>>(), [1, 2]);
    // The only voxel of class 2 on slice 1 is x = 5 % 4, y = 5 / 4.
    assert_eq!(p[&1][1].1.points, vec![(1.0, 1.0, 1)]);
}

/// `msa train --help` says every default, and every run-config field has a flag.
#[test]
fn train_help_shows_the_defaults_and_every_run_setting() {
    let help = ok(&["train", "--help"]);
    for flag in [
        "--epochs <EPOCHS>",
        "--lr-step <LR_STEP>",
        "--lr-gamma <LR_GAMMA>",
        "--lora-rank <LORA_RANK>",
        "--val-fraction <VAL_FRACTION>",
        "--samples <SAMPLES>",
        "--model-config <MODEL_CONFIG>",
    ] {
        assert!(help.contains(flag), "no {flag} in:\n{help}");
    }
    use msa::train::config::{defaults, TrainMode};
    let c = msa::train::config::TrainConfig::new("c".into(), "d".into(), "o".into());
    for shown in [
        format!("[default: {}]", c.epochs),
        format!(
            "default {:e} for adapters and decoder, {:e} for lora, {:e} for all",
            defaults::lr(TrainMode::Adapters),
            defaults::lr(TrainMode::Lora),
            defaults::lr(TrainMode::All)
        ),
        format!("[default: {}]", c.lr_gamma),
        format!("[default: {}]", c.val_fraction),
        "[default: adapters]".to_string(),
        "[default: mixed]".to_string(),
        "bit-identical adapters and Adam state at any thread count".to_string(),
    ] {
        assert!(help.contains(&shown), "no {shown} in:\n{help}");
    }
}

/// `msa eval --prompt PROMPTS.json`: the given prompts are used, and a bad one is refused
/// with its case named.
#[test]
fn eval_takes_prompts_from_a_file_and_names_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ids = msa::data::synthetic::write_folder_dataset(&data, 3, (64, 48), 5).unwrap();
    let prompts = dir.path().join("prompts.json");
    let good: serde_json::Map<String, serde_json::Value> = ids
        .iter()
        .map(|id| (id.clone(), serde_json::json!({"box": [10, 8, 40, 30]})))
        .collect();
    std::fs::write(&prompts, serde_json::Value::Object(good).to_string()).unwrap();
    let ev = dir.path().join("eval");
    let args = |p: &Path| {
        tiny(
            "eval",
            "sam_tiny.safetensors",
            &["--data", &s(&data), "--prompt", &s(p), "--out", &s(&ev)],
        )
    };
    ok(&args(&prompts));
    let csv = std::fs::read_to_string(ev.join("per_case.csv")).unwrap();
    assert!(csv.contains("[10.0,8.0,40.0,30.0]"), "{csv}");
    let bad = dir.path().join("bad.json");
    let case = &ids[0];
    std::fs::write(&bad, format!(r#"{{"{case}": {{"points": [[5, 5, 2]]}}}}"#)).unwrap();
    let e = err(&args(&bad));
    assert!(e.contains(case.as_str()) && e.contains("label 2"), "{e}");
}

/// Training on from a checkpoint that holds adapters of another ratio names the ratio it
/// holds and the flag that takes it, rather than a tensor's shape.
#[test]
fn a_checkpoint_with_adapters_of_another_ratio_names_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture holds depth adapters too, so it trains on volumes.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/hippocampus3d");
    let train = |ratio: &str| {
        let out = dir.path().join(ratio);
        let rest = [
            "--dataset",
            "decathlon",
            "--data",
            &s(&data),
            "--3d",
            "--chunk",
            "2",
            "--limit",
            "2",
            "--epochs",
            "0",
            "--adapter-ratio",
            ratio,
            "--out",
            &s(&out),
        ];
        tiny_vit("train", &rest)
    };
    let e = err(&train("0.125"));
    assert!(
        e.contains("6 wide in a 24-wide block")
            && e.contains("--adapter-ratio 0.125 makes them 3 wide")
            && e.contains("about 0.25"),
        "{e}"
    );
    // At the ratio it holds, the same checkpoint trains on.
    let out = ok(&train("0.25"));
    assert!(out.contains("run folder"), "{out}");
}

#[test]
fn a_checkpoint_with_depth_adapters_on_images_asks_for_3d_or_warns() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/hippocampus2d");
    // The fixture holds depth adapters; every command here runs it on 2D images.
    let data_dir = s(&data);
    let on_data = |cmd: &str, rest: &[&str]| {
        let out = s(&dir.path().join(cmd));
        let mut more = vec!["--data", &data_dir, "--out", &out];
        more.extend(rest);
        tiny_vit(cmd, &more)
    };
    let e = err(&on_data(
        "train",
        &["--adapter-ratio", "0.25", "--epochs", "0"],
    ));
    assert!(
        e.contains("Depth_Adapter") && e.contains("load it with --3d"),
        "{e}"
    );
    // Evaluating and predicting on images take the file's adapters as they are, and say the
    // depth ones stay unused.
    let image = s(&data.join("images/hippocampus_004_z12.png"));
    let mask = s(&dir.path().join("mask.png"));
    let predict = ["--image", &image, "--box", "5,5,25,30", "--out", &mask];
    for args in [
        on_data("eval", &["--prompt", "box"]),
        tiny_vit("predict", &predict),
    ] {
        let out = msa(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("depth adapters") && stderr.contains("not run"),
            "{args:?}: {stderr}"
        );
    }
}
