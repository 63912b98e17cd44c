//! The canonical frame: a volume and a permuted, flipped copy of it (its affine adjusted)
//! are sliced alike and segmented alike, voxel for voxel in world coordinates, for NIfTI
//! and for DICOM.

use msa::io::orientation::{Axis, Reorientation};
use msa::io::Volume;
use std::path::{Path, PathBuf};
use std::process::Command;

const DIMS: [usize; 3] = [24, 20, 5];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A volume stored canonically for axial slices (x to the left, y posterior, k superior,
/// as DICOM stores an axial series): a bright block on a ramp.
fn canonical() -> Volume {
    let [nx, ny, nz] = DIMS;
    let mut data = Vec::with_capacity(nx * ny * nz);
    for k in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let inside = (6..18).contains(&x) && (5..14).contains(&y) && k >= 1;
                data.push(if inside {
                    900.0
                } else {
                    (x + 2 * y + 3 * k) as f32
                });
            }
        }
    }
    Volume {
        dims: DIMS,
        data,
        spacing: [0.75, 0.5, 2.5],
        // RAS: x runs toward the left (-R), y toward posterior (-A).
        affine: [
            [-0.75, 0.0, 0.0, 10.0],
            [0.0, -0.5, 0.0, -20.0],
            [0.0, 0.0, 2.5, 5.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    }
}

/// The same voxels stored as (k, x reversed, y): a permuted and flipped grid whose affine
/// places every voxel where it was.
fn scrambled(v: &Volume) -> Volume {
    let [nx, ny, nz] = v.dims;
    let dims = [nz, nx, ny];
    let mut data = vec![0.0; v.data.len()];
    for y in 0..ny {
        for x in 0..nx {
            for k in 0..nz {
                let (a, b, c) = (k, nx - 1 - x, y);
                data[a + nz * (b + nx * c)] = v.data[x + nx * (y + ny * k)];
            }
        }
    }
    // Stored (a, b, c) = canonical (x = nx-1-b, y = c, k = a).
    let col = |i: usize| [v.affine[0][i], v.affine[1][i], v.affine[2][i]];
    let (cx, cy, ck) = (col(0), col(1), col(2));
    let mut affine = [[0.0f32; 4]; 4];
    for w in 0..3 {
        affine[w][0] = ck[w];
        affine[w][1] = -cx[w];
        affine[w][2] = cy[w];
        affine[w][3] = v.affine[w][3] + cx[w] * (nx as f32 - 1.0);
    }
    affine[3] = [0.0, 0.0, 0.0, 1.0];
    Volume {
        dims,
        data,
        spacing: [v.spacing[2], v.spacing[0], v.spacing[1]],
        affine,
    }
}

fn world(affine: &[[f32; 4]; 4], i: [usize; 3]) -> [i64; 3] {
    let mut p = [0i64; 3];
    for w in 0..3 {
        let v = affine[w][3] + (0..3).map(|a| affine[w][a] * i[a] as f32).sum::<f32>();
        p[w] = (v * 100.0).round() as i64;
    }
    p
}

/// Every voxel's (world position, value), sorted: equal for two grids holding the same
/// voxels in the same places.
fn by_world<T: Copy + Ord>(
    dims: [usize; 3],
    affine: &[[f32; 4]; 4],
    data: &[T],
) -> Vec<([i64; 3], T)> {
    let [nx, ny, nz] = dims;
    let mut out = Vec::with_capacity(data.len());
    for k in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                out.push((world(affine, [x, y, k]), data[x + nx * (y + ny * k)]));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_scrambled_grid_turns_back_into_the_canonical_one() {
    let v = canonical();
    let s = scrambled(&v);
    let as_ints = |d: &[f32]| d.iter().map(|x| *x as i64).collect::<Vec<_>>();
    assert_eq!(
        by_world(s.dims, &s.affine, &as_ints(&s.data)),
        by_world(v.dims, &v.affine, &as_ints(&v.data)),
        "the test's copy must hold the same voxels in the same places"
    );
    let turn = Reorientation::of(&s.affine, s.dims, Axis::Axial);
    assert!(!turn.is_identity());
    let back = turn.volume(&s);
    assert_eq!(back.dims, v.dims);
    assert_eq!(back.data, v.data);
    assert_eq!(back.spacing, v.spacing);
    for (a, b) in back.affine.iter().flatten().zip(v.affine.iter().flatten()) {
        assert!((a - b).abs() < 1e-4, "{:?} vs {:?}", back.affine, v.affine);
    }
    assert_eq!(turn.undo(&back.data), s.data);
    assert!(Reorientation::of(&v.affine, v.dims, Axis::Axial).is_identity());
    // Coronal and sagittal slices of the canonical volume: x, y, k follow their frames.
    let coronal = Reorientation::of(&v.affine, v.dims, Axis::Coronal).volume(&v);
    assert_eq!(coronal.dims, [24, 5, 20]);
    let sagittal = Reorientation::of(&v.affine, v.dims, Axis::Sagittal).volume(&v);
    assert_eq!(sagittal.dims, [20, 5, 24]);
    for turned in [&coronal, &sagittal] {
        let ints = as_ints(&turned.data);
        assert_eq!(
            by_world(turned.dims, &turned.affine, &ints),
            by_world(v.dims, &v.affine, &as_ints(&v.data))
        );
    }
}

fn write_nifti(path: &Path, v: &Volume) {
    let nv = msa::io::nifti::NiftiVolume::from_volume(v.clone());
    msa::io::nifti::write_image(path, &nv).unwrap();
}

fn predict(image: &Path, prompts: &Path, out: &Path) {
    let done = Command::new(env!("CARGO_BIN_EXE_msa"))
        .args(["predict-volume", "--checkpoint"])
        .arg(fixture("sam_tiny.pth"))
        .arg("--model-config")
        .arg(fixture("sam_tiny.json"))
        .arg("--image")
        .arg(image)
        .arg("--prompts")
        .arg(prompts)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

fn labels_by_world(path: &Path) -> Vec<([i64; 3], u8)> {
    let v = msa::io::nifti::read(path).unwrap().volume;
    let labels: Vec<u8> = v.data.iter().map(|&x| x as u8).collect();
    assert!(
        labels.iter().any(|&l| l > 0),
        "{}: no labels",
        path.display()
    );
    by_world(v.dims, &v.affine, &labels)
}

fn write_prompts(dir: &Path) -> PathBuf {
    let prompts = dir.join("prompts.json");
    let json = serde_json::json!({"classes": {
        "1": {"box3d": [5, 4, 1, 19, 15, 4]},
        "2": {"points": {"2": [[3, 17, 1]]}},
    }});
    std::fs::write(&prompts, json.to_string()).unwrap();
    prompts
}

#[test]
fn nifti_stored_two_ways_segments_alike_in_world_coordinates() {
    let dir = tempfile::tempdir().unwrap();
    let v = canonical();
    let prompts = write_prompts(dir.path());
    write_nifti(&dir.path().join("a.nii.gz"), &v);
    write_nifti(&dir.path().join("b.nii.gz"), &scrambled(&v));
    for name in ["a", "b"] {
        let image = dir.path().join(format!("{name}.nii.gz"));
        predict(
            &image,
            &prompts,
            &dir.path().join(format!("{name}-labels.nii.gz")),
        );
    }
    let a = labels_by_world(&dir.path().join("a-labels.nii.gz"));
    let b = labels_by_world(&dir.path().join("b-labels.nii.gz"));
    assert_eq!(a, b);
}

/// A DICOM series of `v` (canonical axial) written with its rows reversed (orientation
/// (1,0,0, 0,-1,0)) and its slices in reverse file order when `turned`.
fn write_series(dir: &Path, v: &Volume, turned: bool) {
    use msa::data::synthetic_dicom::{write_image, Plane};
    std::fs::create_dir_all(dir).unwrap();
    let [nx, ny, nz] = v.dims;
    // LPS position of stored voxel (x, y, k) of the canonical volume: RAS with x, y negated.
    let lps = |x: f64, y: f64, k: f64| {
        let a = &v.affine;
        let ras = |w: usize| {
            a[w][3] as f64 + a[w][0] as f64 * x + a[w][1] as f64 * y + a[w][2] as f64 * k
        };
        [-ras(0), -ras(1), ras(2)]
    };
    for k in 0..nz {
        let row = |r: usize| if turned { ny - 1 - r } else { r };
        let mut pixels = Vec::with_capacity(nx * ny);
        for r in 0..ny {
            for c in 0..nx {
                let value = v.data[c + nx * (row(r) + ny * k)];
                pixels.push(((value + 1024.0) / 2.0) as u16);
            }
        }
        let plane = Plane {
            position: lps(0.0, row(0) as f64, k as f64),
            orientation: if turned {
                [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
            } else {
                [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            },
        };
        let file = dir.join(format!("s{}.dcm", if turned { nz - k } else { k }));
        write_image(&file, "1.2.3.9", k, plane, (ny, nx), &pixels).unwrap();
    }
}

#[test]
fn dicom_stored_two_ways_segments_alike_in_world_coordinates() {
    let dir = tempfile::tempdir().unwrap();
    // The synthetic series' pixel spacing, 0.5 (rows) x 0.75 (columns), is the volume's.
    let v = canonical();
    let prompts = write_prompts(dir.path());
    write_series(&dir.path().join("a"), &v, false);
    write_series(&dir.path().join("b"), &v, true);
    for name in ["a", "b"] {
        predict(
            &dir.path().join(name),
            &prompts,
            &dir.path().join(format!("{name}.nii.gz")),
        );
    }
    let a = labels_by_world(&dir.path().join("a.nii.gz"));
    let b = labels_by_world(&dir.path().join("b.nii.gz"));
    assert_eq!(a, b);
}
