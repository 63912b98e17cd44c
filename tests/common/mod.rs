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
/// (in a `--features cuda` build), set up as `msa` sets it up.
pub fn device() -> Device {
    match std::env::var("MSA_TEST_DEVICE").as_deref() {
        Ok("cuda") => cuda_device(),
        _ => Device::Cpu,
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Device {
    msa::runtime::device::cuda_device(0).expect("MSA_TEST_DEVICE=cuda needs a GPU")
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Device {
    panic!("MSA_TEST_DEVICE=cuda needs a --features cuda build")
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

/// PNG bytes whose header claims w x h RGB pixels (valid CRCs, one tiny data chunk).
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A NIfTI-1 header (352 bytes, int16) claiming `dims` voxels, and no voxels.
pub fn nifti_claiming(dims: [i16; 3]) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let dim = [3i16, dims[0], dims[1], dims[2], 1, 1, 1, 1];
    for (i, d) in dim.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&4i16.to_le_bytes());
    h[72..74].copy_from_slice(&16i16.to_le_bytes());
    for i in 0..4 {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&1f32.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes());
    h[112..116].copy_from_slice(&1f32.to_le_bytes());
    h[344..348].copy_from_slice(b"n+1\0");
    h
}

/// Files under `dir` whose names end in `.tmp`, at any depth.
pub fn tmp_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(tmp_files(&p));
        } else if p.to_string_lossy().ends_with(".tmp") {
            out.push(p);
        }
    }
    out
}

/// `msa train` on the tiny fixture model, reading `data` and writing `out`; callers add the
/// dataset, batch, seed and epoch arguments.
pub fn tiny_train_cmd(data: &std::path::Path, out: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_msa"));
    cmd.arg("train")
        .arg("--checkpoint")
        .arg(fixture("sam_tiny.safetensors"))
        .arg("--config")
        .arg(fixture("sam_tiny.json"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    cmd
}

/// The largest |value| of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest |ours - reference| over the largest |reference|.
pub fn relative_error(ours: &Tensor, reference: &Tensor) -> f32 {
    max_abs_diff(ours, reference) / max_abs(reference).max(1e-12)
}

/// The gradients of Σ out * weights: a random weighting of an op's output, so that every
/// output element reaches the gradients with its own factor.
pub fn weighted_grads(out: &Tensor, weights: &Tensor) -> candle_core::backprop::GradStore {
    (out * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

/// Compiles `tests/cuda_emu/<name>.cpp`, which runs CUDA kernel sources on the CPU against
/// `cuda_emu.h`, with the system's C++ compiler (`CXX`, default `c++`), runs it and returns
/// its report; fails the test, report attached, when the kernels and their check disagree.
pub fn run_emulated(name: &str) -> String {
    use std::process::Command;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-DMSA_EMULATE", "-pthread"])
        .arg("-I")
        .arg(repo.join("tests/cuda_emu"))
        .arg("-I")
        .arg(repo.join("src/kernels/cuda"))
        .arg("-o")
        .arg(&exe)
        .arg(repo.join(format!("tests/cuda_emu/{name}.cpp")))
        .output()
        .unwrap_or_else(|e| panic!("running the C++ compiler `{cxx}` (set CXX): {e}"));
    assert!(
        built.status.success(),
        "compiling {name}.cpp failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe)
        .output()
        .expect("the emulated kernels run");
    let report = String::from_utf8_lossy(&run.stdout).to_string();
    eprintln!("{report}");
    assert!(
        run.status.success(),
        "the kernels and their check disagree:\n{report}"
    );
    report
}

/// Every tensor of a safetensors file as (dtype, shape, raw bytes), by key.
pub fn tensors(
    path: &std::path::Path,
) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let t = (
                format!("{:?}", v.dtype()),
                v.shape().to_vec(),
                v.data().to_vec(),
            );
            (k, t)
        })
        .collect()
}
