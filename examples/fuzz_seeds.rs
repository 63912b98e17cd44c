//! Writes the fuzzers' seed corpora under `fuzz/corpus/<target>/` from the test fixtures and
//! small generated files: `cargo run --release --example fuzz_seeds`.

use anyhow::Result;
use image::{DynamicImage, ImageFormat};
use msa::fuzz::tree_record;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A segmentation of the series the `dicom_seg` target reads against (3 slices of 6 x 8),
/// two segments, written by msa. `tools/dicom_seeds.py` adds compressed DICOM and a
/// segmentation written by highdicom.
fn seg_seed(path: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    for k in 0..3 {
        let file = dir.path().join(format!("s{k}.dcm"));
        msa::data::synthetic_dicom::write_slice(&file, "1.2.3.4", k, 2.5 * k as f64, (6, 8))?;
    }
    let (volume, source) = msa::io::dicom::read_source(dir.path(), None)?;
    let labels: Vec<u8> = (0..volume.data.len()).map(|i| (i % 7 % 3) as u8).collect();
    let segments = [1, 2].map(|label| msa::io::dicom::seg::Segment {
        label,
        name: format!("class {label}"),
    });
    msa::io::dicom::seg::write(path, &labels, &volume, &source, &segments)
}

/// A small oblique volume as gzip and raw NRRD.
fn nrrd_seeds(dir: &Path) -> Result<()> {
    use msa::io::nrrd::{write_with, Encoding, Values};
    let volume = msa::io::Volume {
        dims: [5, 4, 3],
        data: (0..60).map(|i| i as f32 * 1.5 - 7.0).collect(),
        spacing: [0.7, 0.8, 2.5],
        affine: [
            [-0.7, 0.05, 0.0, 12.0],
            [0.0, -0.8, 0.1, -3.0],
            [0.0, 0.0, 2.5, 40.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    };
    write_with(
        &dir.join("small-gzip.nrrd"),
        &volume,
        Values::Float(&volume.data),
        Encoding::Gzip,
    )?;
    write_with(
        &dir.join("small-raw.nrrd"),
        &volume,
        Values::Float(&volume.data),
        Encoding::Raw,
    )
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("fuzz/corpus");
    let fixtures = root.join("tests/fixtures");
    let dir = |t: &str| -> Result<PathBuf> {
        let d = corpus.join(t);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    for f in [
        "flat_f16.pth",
        "offset_view.pth",
        "wrapped_model.pth",
        "wrapped_state_dict.pth",
    ] {
        std::fs::copy(fixtures.join(f), dir("pth")?.join(f))?;
    }
    safetensors_seeds(&dir("safetensors")?)?;
    let images = image_seeds();
    for (name, bytes) in &images {
        std::fs::write(dir("image")?.join(name), bytes)?;
    }
    let (nii, niigz) = nifti_seeds()?;
    std::fs::write(dir("nifti")?.join("small.nii"), &nii)?;
    std::fs::write(dir("nifti")?.join("small.nii.gz"), &niigz)?;
    nrrd_seeds(&dir("nrrd")?)?;
    msa::data::synthetic_dicom::write_slice(
        &dir("dicom")?.join("ct.dcm"),
        "1.2.3",
        0,
        5.0,
        (3, 4),
    )?;
    seg_seed(&dir("dicom_seg")?.join("msa-seg.dcm"))?;
    let prompts = [
        r#"{"classes": {"1": {"box3d": [1, 2, 0, 9, 9, 3]}, "2": {"points": {"1": [[3, 4, 1], [5, 5, 0]]}}}}"#,
        r#"{"classes": {"1": {"boxes": {"0": [1, 1, 5, 5], "3": [2, 2, 8, 8]}, "interpolate_boxes": true}}}"#,
        r#"{"points": [[10, 12, 1], [3, 4, 0]], "box": [1, 2, 30, 40]}"#,
    ];
    for (i, p) in prompts.iter().enumerate() {
        std::fs::write(dir("prompts")?.join(format!("{i}.json")), p)?;
    }
    let cfg =
        msa::train::config::TrainConfig::new("lite_medsam".into(), "data".into(), "run".into());
    std::fs::write(
        dir("run_config")?.join("config.toml"),
        toml::to_string_pretty(&cfg)?,
    )?;
    layout_seeds(&dir("layouts")?, &images[0].1, &niigz)?;
    println!("seeds written under {}", corpus.display());
    Ok(())
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(vec![]);
    // In-memory encoding of a small valid image does not fail.
    img.write_to(&mut out, format).expect("encodes");
    out.into_inner()
}

fn image_seeds() -> Vec<(String, Vec<u8>)> {
    let rgb = image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 90]));
    let gray16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(8, 6, |x, y| {
        image::Luma([(x * 5000 + y * 300) as u16])
    });
    vec![
        (
            "rgb.png".into(),
            encode(rgb.clone().into(), ImageFormat::Png),
        ),
        (
            "gray.png".into(),
            encode(
                DynamicImage::from(rgb.clone()).to_luma8().into(),
                ImageFormat::Png,
            ),
        ),
        (
            "gray16.png".into(),
            encode(gray16.clone().into(), ImageFormat::Png),
        ),
        (
            "gray16.tiff".into(),
            encode(gray16.into(), ImageFormat::Tiff),
        ),
        (
            "rgb.jpg".into(),
            encode(rgb.clone().into(), ImageFormat::Jpeg),
        ),
        ("rgb.bmp".into(), encode(rgb.into(), ImageFormat::Bmp)),
    ]
}

fn nifti_seeds() -> Result<(Vec<u8>, Vec<u8>)> {
    let dims = [6, 5, 3];
    let volume = msa::io::Volume {
        dims,
        data: (0..90).map(|i| i as f32 - 20.0).collect(),
        spacing: [1.0, 1.5, 3.0],
        affine: [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.5, 0.0, 0.0],
            [0.0, 0.0, 3.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    };
    let tmp = std::env::temp_dir().join(format!("msa-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let v = msa::io::nifti::NiftiVolume::from_volume(volume);
    let (a, b) = (tmp.join("v.nii"), tmp.join("v.nii.gz"));
    msa::io::nifti::write_image(&a, &v)?;
    msa::io::nifti::write_image(&b, &v)?;
    let out = (std::fs::read(&a)?, std::fs::read(&b)?);
    std::fs::remove_dir_all(&tmp)?;
    Ok(out)
}

fn safetensors_seeds(dir: &Path) -> Result<()> {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let mut t = BTreeMap::new();
    t.insert(
        "image_encoder.blocks.0.MLP_Adapter.D_fc1.weight".to_string(),
        Tensor::arange(0f32, 8.0, &dev)?.reshape((2, 4))?,
    );
    t.insert(
        "mask_decoder.iou_token.weight".to_string(),
        Tensor::ones((1, 4), candle_core::DType::F16, &dev)?,
    );
    msa::weights::save_safetensors(&dir.join("plain.safetensors"), &t, None)?;
    let meta = msa::weights::adapter_file::AdapterMeta {
        format: msa::weights::adapter_file::FORMAT.into(),
        base_preset: "vit_b".into(),
        base_backbone: "vit".into(),
        preprocess: None,
        base_sha256: "00".repeat(32),
        adapters: Default::default(),
        image_size: 1024,
        training: serde_json::json!({"epochs": 1}),
        tool_version: "seed".into(),
    };
    msa::weights::adapter_file::save(&dir.join("adapters.safetensors"), &t, &meta)
}

fn layout_seeds(dir: &Path, png: &[u8], nii_gz: &[u8]) -> Result<()> {
    let folder: Vec<u8> = [
        tree_record("images/a.png", png),
        tree_record("masks/a.png", png),
        tree_record("images/b.png", png),
        tree_record("masks/b.png", png),
        tree_record("split.json", br#"{"train": ["a"], "test": ["b"]}"#),
    ]
    .concat();
    std::fs::write(dir.join("folder.bin"), folder)?;
    let dataset =
        br#"{"name": "seed", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
        "training": [{"image": "./imagesTr/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"}]}"#;
    let decathlon: Vec<u8> = [
        tree_record("dataset.json", dataset),
        tree_record("imagesTr/c1.nii.gz", nii_gz),
        tree_record("labelsTr/c1.nii.gz", nii_gz),
    ]
    .concat();
    std::fs::write(dir.join("decathlon.bin"), decathlon)?;
    let isic: Vec<u8> = [
        tree_record("ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg", png),
        tree_record(
            "ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png",
            png,
        ),
    ]
    .concat();
    std::fs::write(dir.join("isic.bin"), isic)?;
    Ok(())
}
