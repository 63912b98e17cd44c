//! NIfTI volumes: reading every supported voxel type with its scaling and geometry, writing
//! label volumes on the input's grid, and refusing bad files by name.

use msa::io::nifti::{read, write_labels};
use msa::io::{Intensity, Volume};
use ndarray::{Array3, ShapeBuilder};
use nifti::writer::WriterOptions;
use nifti::NiftiHeader;
use std::path::Path;

const DIMS: (usize, usize, usize) = (5, 4, 3);

/// A header with an oblique sform and a qform, as scanners write them.
fn header() -> NiftiHeader {
    let mut h = NiftiHeader {
        sform_code: 1,
        qform_code: 1,
        srow_x: [-0.8, 0.05, 0.0, 90.0],
        srow_y: [0.0, 0.8, 0.1, -120.5],
        srow_z: [0.0, 0.0, 2.5, -60.0],
        quatern_b: 0.0,
        quatern_c: 0.0,
        quatern_d: 1.0,
        quatern_x: 90.0,
        quatern_y: -120.5,
        quatern_z: -60.0,
        ..NiftiHeader::default()
    };
    h.pixdim = [1.0, 0.8, 0.8, 2.5, 0.0, 0.0, 0.0, 0.0];
    h
}

/// Voxel (x, y, z) holds x + 10 y + 100 z, minus 50.
fn values<T: From<i16>>() -> Array3<T> {
    let (nx, ny, nz) = DIMS;
    Array3::from_shape_fn((nx, ny, nz).f(), |(x, y, z)| {
        T::from((x + 10 * y + 100 * z) as i16 - 50)
    })
}

fn write<T: nifti::DataElement + bytemuck::Pod>(path: &Path, a: &Array3<T>, h: &NiftiHeader) {
    WriterOptions::new(path)
        .reference_header(h)
        .write_nifti(a)
        .unwrap();
}

/// Overwrites bytes of an uncompressed .nii header.
fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut raw = std::fs::read(path).unwrap();
    raw[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, raw).unwrap();
}

fn expected(scale: f32, offset: f32) -> Vec<f32> {
    let (nx, ny, nz) = DIMS;
    let mut v = Vec::new();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                v.push(((x + 10 * y + 100 * z) as f32 - 50.0) * scale + offset);
            }
        }
    }
    v
}

#[test]
fn every_voxel_type_reads_x_fastest_with_spacing_and_affine() {
    let dir = tempfile::tempdir().unwrap();
    let h = header();
    type Make<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Make)> = vec![
        (
            "i16.nii.gz",
            Box::new(|p: &Path| write(p, &values::<i16>(), &h)),
        ),
        (
            "f32.nii",
            Box::new(|p: &Path| write(p, &values::<f32>(), &h)),
        ),
        (
            "f64.nii.gz",
            Box::new(|p: &Path| write(p, &values::<f64>(), &h)),
        ),
    ];
    for (name, make) in cases {
        let path = dir.path().join(name);
        make(&path);
        let v = read(&path).unwrap();
        assert_eq!(v.volume.dims, [5, 4, 3], "{name}");
        assert_eq!(v.volume.data, expected(1.0, 0.0), "{name}");
        assert_eq!(v.volume.spacing, [0.8, 0.8, 2.5], "{name}");
        assert_eq!(v.volume.affine[0], [-0.8, 0.05, 0.0, 90.0], "{name}");
        assert_eq!(v.volume.affine[2], [0.0, 0.0, 2.5, -60.0], "{name}");
    }
    // uint8 holds 0..=255 only: x + 10 y + 100 z for z < 2 after the -50 shift stays in range.
    let path = dir.path().join("u8.nii");
    let a = Array3::from_shape_fn(DIMS.f(), |(x, y, z)| (x + 10 * y + 50 * z) as u8);
    write(&path, &a, &h);
    let v = read(&path).unwrap();
    assert_eq!(v.volume.data[5 * 4 * 2 + 5 + 1], (1 + 10 + 100) as f32);
}

#[test]
fn scl_slope_and_inter_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ct.nii");
    write(&path, &values::<i16>(), &header());
    // NIfTI-1: scl_slope at byte 112, scl_inter at 116 (little-endian as written).
    patch(&path, 112, &2.0f32.to_le_bytes());
    patch(&path, 116, &(-1000.0f32).to_le_bytes());
    let v = read(&path).unwrap();
    assert_eq!(v.volume.data, expected(2.0, -1000.0));
}

#[test]
fn label_volumes_keep_the_input_grid() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("img.nii.gz");
    write(&input, &values::<i16>(), &header());
    let img = read(&input).unwrap();
    let labels: Vec<u8> = (0..60).map(|i| (i % 3) as u8).collect();
    let out = dir.path().join("seg.nii.gz");
    write_labels(&out, &labels, &img).unwrap();
    let seg = read(&out).unwrap();
    assert_eq!(seg.volume.dims, img.volume.dims);
    assert_eq!(seg.volume.affine, img.volume.affine);
    assert_eq!(seg.volume.spacing, img.volume.spacing);
    assert_eq!(seg.header.qform_code, 1);
    assert_eq!(seg.header.quatern_d, 1.0);
    assert_eq!(seg.header.datatype, 2, "uint8 labels");
    let back: Vec<u8> = seg.volume.data.iter().map(|&v| v as u8).collect();
    assert_eq!(back, labels);
    let err = write_labels(&out, &labels[..59], &img)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("59 labels") && err.contains("5 x 4 x 3"),
        "{err}"
    );
}

/// The writer derives its own file name from the one it is given; a plain `.nii` output, or
/// one with dots in its stem, once ended as another file (`a.b.nii` written as `a.nii`) and
/// a failed rename.
#[test]
fn labels_are_written_under_every_kind_of_name_with_nothing_left_beside() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("img.nii.gz");
    write(&input, &values::<i16>(), &header());
    let img = read(&input).unwrap();
    let labels: Vec<u8> = (0..60).map(|i| (i % 2) as u8).collect();
    let names = ["plain.nii", "case.001.nii", "case.002.nii.gz", "seg.nii.gz"];
    for name in names {
        let out = dir.path().join("out").join(name);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        write_labels(&out, &labels, &img).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let back: Vec<u8> = read(&out)
            .unwrap()
            .volume
            .data
            .iter()
            .map(|&v| v as u8)
            .collect();
        assert_eq!(back, labels, "{name}");
    }
    let mut written: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(written, expected);
}

#[test]
fn bad_volumes_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // A truncated gzip.
    let gz = dir.path().join("cut.nii.gz");
    write(&gz, &values::<f32>(), &header());
    let raw = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &raw[..raw.len() / 2]).unwrap();
    let err = format!("{:#}", read(&gz).unwrap_err());
    assert!(
        err.contains("cut.nii.gz") && err.contains("truncated"),
        "{err}"
    );
    // A voxel type outside the list: float64 data relabelled complex64 (same 8 bytes).
    let c = dir.path().join("complex.nii");
    write(&c, &values::<f64>(), &header());
    patch(&c, 70, &32i16.to_le_bytes());
    let err = format!("{:#}", read(&c).unwrap_err());
    assert!(
        err.contains("complex.nii") && err.contains("Complex64") && err.contains("int16"),
        "{err}"
    );
    // Not a file at all.
    let err = format!("{:#}", read(&dir.path().join("missing.nii")).unwrap_err());
    assert!(err.contains("missing.nii"), "{err}");
}

fn volume(data: Vec<f32>) -> Volume {
    Volume {
        dims: [data.len(), 1, 1],
        data,
        spacing: [1.0; 3],
        affine: [[0.0; 4]; 4],
    }
}

#[test]
fn intensity_defaults_follow_the_modality_then_the_values() {
    let ct = volume(vec![-1024.0, 0.0, 400.0]);
    let mri = volume((0..1000).map(|i| i as f32).collect());
    assert_eq!(Intensity::choose(None, &ct).0, Intensity::CT);
    assert_eq!(Intensity::choose(None, &mri).0, Intensity::MRI);
    let (chosen, why) = Intensity::choose(Some("CT"), &mri);
    assert_eq!(chosen, Intensity::CT);
    assert!(why.contains("dataset.json"), "{why}");
    assert_eq!(Intensity::choose(Some("MRI"), &ct).0, Intensity::MRI);
    let (lo, hi) = Intensity::MRI.range(&mri);
    assert!(
        (lo - 4.995).abs() < 1e-3 && (hi - 994.005).abs() < 1e-3,
        "{lo} {hi}"
    );
}

#[test]
fn without_an_sform_the_qform_places_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.nii");
    // A 180 degree turn about z (quaternion (0, 0, 0, 1)), voxels 0.8 x 0.8 x 2.5 mm.
    let h = NiftiHeader {
        sform_code: 0,
        ..header()
    };
    write(&path, &values::<f32>(), &h);
    let a = read(&path).unwrap().volume.affine;
    assert_eq!(a[0], [-0.8, 0.0, 0.0, 90.0]);
    assert_eq!(a[1], [0.0, -0.8, 0.0, -120.5]);
    assert_eq!(a[2], [0.0, 0.0, 2.5, -60.0]);
}

/// A Decathlon folder of `n` cases (4 x 4 x 2 volumes); case `bad` gets a 4 x 4 x 3 label.
fn decathlon(dir: &Path, n: usize, bad: Option<usize>) {
    std::fs::create_dir_all(dir.join("imagesTr")).unwrap();
    std::fs::create_dir_all(dir.join("labelsTr")).unwrap();
    let mut training = vec![];
    for i in 0..n {
        let img = Array3::from_shape_fn((4, 4, 2).f(), |(x, y, z)| (x + y + z) as f32);
        let nz = if bad == Some(i) { 3 } else { 2 };
        let lab = Array3::from_shape_fn((4, 4, nz).f(), |(x, _, _)| (x % 3) as u8);
        let name = format!("case_{i:03}.nii.gz");
        write(&dir.join("imagesTr").join(&name), &img, &header());
        write(&dir.join("labelsTr").join(&name), &lab, &header());
        training.push(serde_json::json!({
            "image": format!("./imagesTr/{name}"),
            "label": format!("./labelsTr/{name}"),
        }));
    }
    let json = serde_json::json!({
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "training": training,
    });
    std::fs::write(dir.join("dataset.json"), json.to_string()).unwrap();
}

#[test]
fn decathlon_datasets_list_their_cases_and_hold_out_the_last() {
    use msa::data::decathlon::{load_case, Decathlon};
    let dir = tempfile::tempdir().unwrap();
    decathlon(dir.path(), 5, Some(4));
    let ds = Decathlon::open(dir.path()).unwrap();
    assert_eq!(ds.modality.as_deref(), Some("CT"));
    assert_eq!(ds.labels.len(), 2);
    assert_eq!(ds.labels[&2], "tumour");
    let (train, test) = ds.holdout(2);
    let ids =
        |v: &[msa::data::decathlon::VolumeCase]| v.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&train), ["case_000", "case_001", "case_002"]);
    assert_eq!(ids(&test), ["case_003", "case_004"]);
    let (img, lab) = load_case(&train[0]).unwrap();
    assert_eq!(img.volume.dims, lab.volume.dims);
    let err = format!("{:#}", load_case(&test[1]).unwrap_err());
    assert!(
        err.contains("case_004") && err.contains("[4, 4, 2]") && err.contains("[4, 4, 3]"),
        "{err}"
    );
    // A listed file that is missing is named.
    std::fs::remove_file(dir.path().join("labelsTr/case_001.nii.gz")).unwrap();
    let err = format!("{:#}", Decathlon::open(dir.path()).unwrap_err());
    assert!(
        err.contains("labelsTr/case_001.nii.gz") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn label_maps_select_and_merge_label_values() {
    use msa::data::decathlon::LabelMap;
    let raw = [0.0, 1.0, 2.0, 6.0, 7.0, 6.9999];
    let m = LabelMap::parse("1,2,6").unwrap();
    assert_eq!(m.classes(), 3);
    assert_eq!(m.apply(&raw), vec![0, 1, 2, 3, 0, 0]);
    let merged = LabelMap::parse(r#"{"6": 1, "7": 1}"#).unwrap();
    assert_eq!(merged.classes(), 1);
    assert_eq!(merged.apply(&raw), vec![0, 0, 0, 1, 1, 1]);
    for (bad, says) in [
        ("1,x", "`x`"),
        ("0,1", "background"),
        ("2,2", "twice"),
        (r#"{"3": 0}"#, "1..=255"),
    ] {
        let err = format!("{:#}", LabelMap::parse(bad).unwrap_err());
        assert!(err.contains(says), "{bad}: {err}");
    }
}
