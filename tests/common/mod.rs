//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// A file under `tests/fixtures`. `MSA_REPO` points at the checkout when a test binary runs
/// outside cargo (on a GPU machine, say); otherwise the build-time path is used.
pub fn fixture(name: &str) -> PathBuf {
    let root = std::env::var("MSA_REPO").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    PathBuf::from(root)
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// The device parity tests run on: CPU, or the first GPU when `MSA_TEST_DEVICE=cuda`
/// (in a `--features cuda` build).
pub fn device() -> Device {
    match std::env::var("MSA_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("MSA_TEST_DEVICE=cuda needs a CUDA build and GPU"),
        _ => Device::Cpu,
    }
}

/// Fixture tensors, on `device()`.
pub fn load_cases(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &device()).expect("fixture loads")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let b = b
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[track_caller]
pub fn assert_close(what: &str, ours: &Tensor, golden: &Tensor, tol: f32) {
    assert_eq!(
        ours.dims(),
        golden.dims(),
        "{what}: shape {:?} vs golden {:?}",
        ours.dims(),
        golden.dims()
    );
    if ours.elem_count() == 0 {
        return;
    }
    let d = max_abs_diff(ours, golden);
    assert!(d <= tol, "{what}: max |ours - golden| = {d:e} > {tol:e}");
}

/// Every golden gradient `<prefix><key>` against the gradient autograd gave the trainable
/// tensor `key`, compared by `check`; returns how many were checked.
pub fn check_golden_grads(
    cases: &HashMap<String, Tensor>,
    prefix: &str,
    vars: &std::collections::BTreeMap<String, candle_core::Var>,
    grads: &candle_core::backprop::GradStore,
    check: impl Fn(&str, &Tensor, &Tensor),
) -> usize {
    let mut checked = 0;
    for (name, golden) in cases.iter().filter(|(k, _)| k.starts_with(prefix)) {
        let key = name.trim_start_matches(prefix);
        let var = vars
            .get(key)
            .unwrap_or_else(|| panic!("no trainable {key}"));
        let ours = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        check(key, ours, golden);
        checked += 1;
    }
    checked
}
