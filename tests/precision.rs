//! `--precision`: the frozen image encoder in bf16 or f16 against the official golden
//! tensors (computed in f32), with adapters and their gradients kept in f32. The
//! tolerances are relative to the largest golden value and are justified in
//! tests/fixtures/README.md ("Reduced precision").

mod common;

use candle_core::DType;
use common::{device, fixture, load_cases, relative_error};
use msa::model::{
    AdapterConfig, AttentionKernel, MaskSelection, ModelOptions, Prompts, Sam, SamConfig,
};
use msa::resize::bilinear;
use msa::train::loss::bce_with_logits;
use msa::train::loss_scale::LossScale;
use msa::weights::{is_adapter_key, Checkpoint, Params, Source};

/// The reduced precisions this device computes: candle's CPU matmul has no bf16, so the CPU
/// checks f16 and a GPU (MSA_TEST_DEVICE=cuda) checks both.
fn reduced() -> Vec<DType> {
    match device() {
        candle_core::Device::Cpu => vec![DType::F16],
        _ => vec![DType::BF16, DType::F16],
    }
}

/// bf16 keeps 8 significant bits, f16 11: bf16's tolerance is f16's times 2^3 (see the
/// fixtures' README).
fn tolerance(dtype: DType) -> f32 {
    const F16: f32 = 5e-3;
    match dtype {
        DType::BF16 => F16 * 8.0,
        _ => F16,
    }
}

fn model(file: &str, cfg: &SamConfig, ad: &AdapterConfig, dtype: DType) -> (Sam, Params) {
    model_with(file, cfg, ad, dtype, false)
}

/// `model`, with the ViT's attention on `kernels::attention::tensor_cores` when `tensor_cores` (the tensor-core
/// kernels on a GPU, their f64 reference loops on the CPU).
fn model_with(
    file: &str,
    cfg: &SamConfig,
    ad: &AdapterConfig,
    dtype: DType,
    tensor_cores: bool,
) -> (Sam, Params) {
    let mut ckpt = Checkpoint::read(&fixture(file)).unwrap();
    if !ad.any() {
        ckpt.tensors.retain(|k, _| !is_adapter_key(k));
    }
    let params = Params::with_options(Source::from(ckpt), &device(), true, 0);
    let opts = ModelOptions {
        attention: match tensor_cores {
            true => AttentionKernel::TensorCores,
            false => AttentionKernel::Standard,
        },
        encoder_dtype: dtype,
    };
    let sam = Sam::load_with(&params, cfg, ad, &opts).unwrap();
    (sam, params)
}

#[test]
fn vit_embeddings_in_reduced_precision_match_the_golden_ones() {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let t = load_cases("sam_tiny_cases.safetensors");
    for (dtype, tensor_cores) in reduced().into_iter().flat_map(|d| [(d, false), (d, true)]) {
        let none = AdapterConfig::none();
        let (sam, _) = model_with("sam_tiny.safetensors", &cfg, &none, dtype, tensor_cores);
        let x = sam.preprocess(&t["model.raw_image"]).unwrap();
        let emb = sam.encode(&x).unwrap();
        assert_eq!(
            emb.dtype(),
            DType::F32,
            "embeddings leave the encoder as f32"
        );
        let e = relative_error(&emb, &t["model.image_embeddings"]);
        let on = if tensor_cores {
            ", tensor-core attention"
        } else {
            ""
        };
        eprintln!("vit {dtype:?}{on}: embeddings relative error {e:e}");
        assert!(e <= tolerance(dtype), "{dtype:?}{on}: relative error {e:e}");
    }
}

#[test]
fn tinyvit_adapters_train_in_f32_over_a_reduced_precision_encoder() {
    let cfg = SamConfig::from_json_file(&fixture("tinyvit_tiny.json")).unwrap();
    let t = load_cases("tinyvit_tiny_cases.safetensors");
    let ad = AdapterConfig {
        depth: true,
        ..AdapterConfig::default()
    };
    for dtype in reduced() {
        let (sam, params) = model("tinyvit_tiny.safetensors", &cfg, &ad, dtype);
        let emb = sam.encode(&t["tiny.input"]).unwrap();
        let e = relative_error(&emb, &t["tiny.msa2d.image_embeddings"]);
        eprintln!("tinyvit {dtype:?}: embeddings relative error {e:e}");
        assert!(
            e <= tolerance(dtype),
            "{dtype:?}: embeddings, relative error {e:e}"
        );
        let prompts = Prompts {
            points: Some((
                t["tiny.msa2d.point_coords"].clone(),
                t["tiny.msa2d.point_labels"].clone(),
            )),
            ..Default::default()
        };
        let (low, _) = sam
            .decode(&emb, &prompts)
            .unwrap()
            .select(MaskSelection::Classes(1))
            .unwrap();
        let pred = bilinear(&low, 64, 64).unwrap();
        let loss = bce_with_logits(&pred, &t["tiny.msa2d.mask"], 2.0).unwrap();
        let vars = params.trainables();
        // f16 needs the loss scaled (the gradients are near 1e-5; see train::loss_scale).
        let scale = LossScale::default();
        let scaled = (loss * scale.scale()).unwrap().backward().unwrap();
        let grads = scale
            .unscale(scaled, &vars)
            .unwrap()
            .expect("finite gradients");
        let mut worst = 0f32;
        let mut checked = 0;
        for (name, golden) in t.iter().filter(|(k, _)| k.starts_with("tiny.msa2d.grad.")) {
            let key = name.trim_start_matches("tiny.msa2d.grad.");
            let var = &vars[key];
            assert_eq!(var.dtype(), DType::F32, "{key}: adapters stay f32");
            let g = grads.get(var.as_tensor()).unwrap();
            assert_eq!(g.dtype(), DType::F32, "{key}: gradients are f32");
            worst = worst.max(relative_error(g, golden));
            checked += 1;
        }
        eprintln!("tinyvit {dtype:?}: adapter gradients relative error {worst:e}");
        assert_eq!(checked, 32);
        assert!(
            worst <= 2.0 * tolerance(dtype),
            "{dtype:?}: adapter gradients, relative error {worst:e}"
        );
    }
}

/// `msa train --precision f16` on the CPU: the run records its precision, saves f32
/// adapters, and learns as the f32 run does (losses and validation Dice close). Adapter
/// values themselves are not compared: Adam moves each by about the learning rate in the
/// direction of its gradient's sign, and near-zero gradients flip sign under f16 rounding.
#[test]
fn an_f16_training_run_learns_like_the_f32_run() {
    use msa::model::precision::Precision;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 8, (64, 48), 6).unwrap();
    let train = |precision: Precision| {
        let out = dir.path().join(format!("{precision:?}"));
        let mut c = msa::train::config::TrainConfig::new(
            fixture("sam_tiny.safetensors"),
            data.clone(),
            out.clone(),
        );
        c.model_config = Some(fixture("sam_tiny.json"));
        c.epochs = 2;
        c.batch_size = 4;
        c.lr = 3e-3;
        c.seed = 3;
        c.precision = Some(precision);
        let result = msa::train::run::run(&c, &candle_core::Device::Cpu, false).unwrap();
        let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
        let name = format!("{precision:?}").to_lowercase();
        assert!(log.contains(&format!("\"precision\":\"{name}\"")), "{log}");
        let saved = Checkpoint::read(&out.join("adapters_last.safetensors")).unwrap();
        assert!(saved.tensors.values().all(|t| t.dtype() == DType::F32));
        result.history
    };
    let (full, half) = (train(Precision::F32), train(Precision::F16));
    for (a, b) in full.iter().zip(&half) {
        eprintln!(
            "epoch {}: loss {} (f32) {} (f16), val Dice {:?} {:?}",
            a.epoch, a.train_loss, b.train_loss, a.val_dice, b.val_dice
        );
        let rel = (a.train_loss - b.train_loss).abs() / a.train_loss.abs().max(1e-9);
        assert!(rel < 2e-2, "epoch {}: losses differ by {rel:e}", a.epoch);
        let (da, db) = (a.val_dice.unwrap(), b.val_dice.unwrap());
        assert!(
            (da - db).abs() < 0.05,
            "epoch {}: Dice {da} against {db}",
            a.epoch
        );
    }
}

/// The dynamic loss scale is part of the run state: a resumed f16 run counts its good steps
/// on from where the first part stopped, instead of starting the scale over.
#[test]
fn a_resumed_f16_run_keeps_its_loss_scale() {
    use msa::model::precision::Precision;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 6, (64, 48), 7).unwrap();
    let out = dir.path().join("run");
    let mut c = msa::train::config::TrainConfig::new(
        fixture("sam_tiny.safetensors"),
        data.clone(),
        out.clone(),
    );
    c.model_config = Some(fixture("sam_tiny.json"));
    c.batch_size = 2;
    c.seed = 5;
    c.precision = Some(Precision::F16);
    let scales = |out: &std::path::Path| -> Vec<serde_json::Value> {
        let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == "epoch")
            .map(|v| v["loss_scale"].clone())
            .collect()
    };
    c.epochs = 1;
    msa::train::run::run(&c, &candle_core::Device::Cpu, false).unwrap();
    c.epochs = 2;
    msa::train::run::run(&c, &candle_core::Device::Cpu, true).unwrap();
    let logged = scales(&out);
    assert_eq!(logged.len(), 2, "{logged:?}");
    let steps = |v: &serde_json::Value| v["good_steps"].as_u64().unwrap();
    assert!(steps(&logged[0]) > 0, "{logged:?}");
    // No overflow at this size: the scale stays, and the count goes on.
    assert_eq!(logged[1]["scale"], logged[0]["scale"], "{logged:?}");
    assert_eq!(steps(&logged[1]), 2 * steps(&logged[0]), "{logged:?}");
}

#[test]
fn bf16_on_the_cpu_is_refused_with_a_reason() {
    use msa::model::precision::Precision;
    let err = Precision::resolve(Some(Precision::Bf16), &candle_core::Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("needs a GPU"), "{err}");
}

/// Twice the error of the official LiteMedSAM encoder itself in that precision on the MRI
/// slice (tools/lite_medsam_half_error.py, PyTorch 2.11 on the CPU: f16 1.07e-2, bf16 0.129).
fn lite_medsam_tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 0.26,
        _ => 2.2e-2,
    }
}

/// The real LiteMedSAM (fetched on first use) with its encoder in reduced precision,
/// against the official module's f32 embeddings of a hippocampus MRI slice and a
/// synthetic image.
#[test]
fn real_lite_medsam_embeddings_in_reduced_precision_match_the_golden_ones() {
    use msa::weights::{load_model, LoadOptions};
    let t = load_cases("lite_medsam_cases.safetensors");
    for dtype in reduced() {
        let opts = LoadOptions {
            encoder_dtype: Some(dtype),
            ..Default::default()
        };
        let loaded = load_model(std::path::Path::new("lite_medsam"), &opts, &device())
            .expect("lite_medsam loads (fetched with pip on first use)");
        for name in ["mri", "synth"] {
            let emb = loaded
                .sam
                .encode(&t[&format!("lite.{name}.input")])
                .unwrap();
            let golden = &t[&format!("lite.{name}.image_embeddings")];
            let e = relative_error(&emb, golden);
            eprintln!("lite_medsam {name} {dtype:?}: embeddings relative error {e:e}");
            let tol = lite_medsam_tolerance(dtype);
            assert!(e <= tol, "{name} {dtype:?}: relative error {e:e}");
        }
    }
}
