//! A DICOM series written here (3 CT slices, out of order on disk) read back as a volume:
//! order by position, rescale, spacing and the RAS affine; a folder of two series refused.

use msa::io::dicom::read_series;
use std::path::Path;

const ROWS: usize = 3;
const COLUMNS: usize = 4;

/// Slice `k` of this test's series at z = `z` mm.
fn write_slice(path: &Path, series: &str, k: usize, z: f64) {
    msa::data::synthetic_dicom::write_slice(path, series, k, z, (ROWS, COLUMNS)).unwrap();
}

#[test]
fn a_series_reads_sorted_by_position_with_rescale_and_geometry() {
    let dir = tempfile::tempdir().unwrap();
    // File names in a different order than the slice positions.
    write_slice(&dir.path().join("a.dcm"), "1.2.3.4", 2, 10.0);
    write_slice(&dir.path().join("b.dcm"), "1.2.3.4", 0, 5.0);
    write_slice(&dir.path().join("c.dcm"), "1.2.3.4", 1, 7.5);
    std::fs::write(dir.path().join("notes.txt"), "not DICOM").unwrap();
    let v = read_series(dir.path()).unwrap();
    assert_eq!(v.dims, [COLUMNS, ROWS, 3]);
    let mut expected = vec![];
    for k in 0..3 {
        for r in 0..ROWS {
            for c in 0..COLUMNS {
                expected.push(2.0 * (100 * k + 10 * r + c) as f32 - 1024.0);
            }
        }
    }
    assert_eq!(v.data, expected);
    assert_eq!(v.spacing, [0.75, 0.5, 2.5]);
    // LPS -> RAS: x and y world axes negated.
    assert_eq!(v.affine[0], [-0.75, 0.0, 0.0, 10.0]);
    assert_eq!(v.affine[1], [0.0, -0.5, 0.0, -20.0]);
    assert_eq!(v.affine[2], [0.0, 0.0, 2.5, 5.0]);
}

#[test]
fn a_folder_with_two_series_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_slice(&dir.path().join("a.dcm"), "1.2.3.4", 0, 5.0);
    write_slice(&dir.path().join("b.dcm"), "1.2.3.5", 1, 7.5);
    let err = format!("{:#}", read_series(dir.path()).unwrap_err());
    assert!(
        err.contains("holds 2 series") && err.contains("1.2.3.5") && err.contains("--series"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let err = format!("{:#}", read_series(empty.path()).unwrap_err());
    assert!(err.contains("no DICOM image files"), "{err}");
}

#[test]
fn labels_for_a_dicom_series_are_written_on_its_grid() {
    use msa::io::nifti::{read, write_labels, NiftiVolume};
    let dir = tempfile::tempdir().unwrap();
    for (k, z) in [(0, 5.0), (1, 7.5), (2, 10.0)] {
        write_slice(&dir.path().join(format!("{k}.dcm")), "1.2.3.4", k, z);
    }
    let series = NiftiVolume::from_volume(read_series(dir.path()).unwrap());
    let labels: Vec<u8> = (0..COLUMNS * ROWS * 3).map(|i| (i % 2) as u8).collect();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("seg.nii.gz");
    write_labels(&path, &labels, &series).unwrap();
    let back = read(&path).unwrap();
    assert_eq!(back.volume.dims, [COLUMNS, ROWS, 3]);
    assert_eq!(back.volume.spacing, [0.75, 0.5, 2.5]);
    assert_eq!(back.volume.affine, series.volume.affine);
    assert_eq!(
        back.volume.data,
        labels.iter().map(|&l| l as f32).collect::<Vec<_>>()
    );
}
