//! Generated images with known masks, shared by the demo, tests and benchmarks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "generated data for tests and demos, never user input"
)]

use image::RgbImage;

/// A small deterministic generator (splitmix64), so that generated data is the same
/// on every machine.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// A lesion-like image: a darker reddish textured ellipse on lighter noisy skin.
/// Returns the image and its ground-truth mask (row-major, true inside the ellipse).
pub fn lesion_image(width: usize, height: usize, seed: u64) -> (RgbImage, Vec<bool>) {
    styled_lesion_image(width, height, seed, Style::Dermoscopy)
}

/// Looks of generated images, for tests that need a domain shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Dark reddish ellipse on light skin tones.
    Dermoscopy,
    /// Bright gray ellipse on dark speckled background, ultrasound-like.
    Ultrasound,
}

pub fn styled_lesion_image(
    width: usize,
    height: usize,
    seed: u64,
    style: Style,
) -> (RgbImage, Vec<bool>) {
    let mut rng = SplitMix(seed);
    let cx = width as f64 * (0.35 + 0.3 * rng.uniform());
    let cy = height as f64 * (0.35 + 0.3 * rng.uniform());
    let rx = width as f64 * (0.12 + 0.12 * rng.uniform());
    let ry = height as f64 * (0.12 + 0.12 * rng.uniform());
    let mut img = RgbImage::new(width as u32, height as u32);
    let mut mask = vec![false; width * height];
    for y in 0..height {
        for x in 0..width {
            let dx = (x as f64 + 0.5 - cx) / rx;
            let dy = (y as f64 + 0.5 - cy) / ry;
            let inside = dx * dx + dy * dy <= 1.0;
            mask[y * width + x] = inside;
            let noise = rng.uniform() * 30.0;
            let px = match (style, inside) {
                (Style::Dermoscopy, true) => [150.0 + noise, 90.0 + noise, 70.0 + noise],
                (Style::Dermoscopy, false) => [
                    200.0 + noise * 0.5,
                    170.0 + noise * 0.5,
                    150.0 + noise * 0.5,
                ],
                (Style::Ultrasound, true) => [170.0 + noise; 3],
                (Style::Ultrasound, false) => [40.0 + 2.0 * noise; 3],
            };
            img.put_pixel(
                x as u32,
                y as u32,
                image::Rgb(px.map(|v| v.min(255.0) as u8)),
            );
        }
    }
    (img, mask)
}

/// Writes `n` lesion images as a generic folder dataset (`images/<id>.png`,
/// `masks/<id>.png`) and returns the ids.
pub fn write_folder_dataset(
    dir: &std::path::Path,
    n: usize,
    size: (usize, usize),
    seed: u64,
) -> anyhow::Result<Vec<String>> {
    write_styled_dataset(dir, n, size, seed, Style::Dermoscopy)
}

pub fn write_styled_dataset(
    dir: &std::path::Path,
    n: usize,
    (width, height): (usize, usize),
    seed: u64,
    style: Style,
) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir.join("images"))?;
    std::fs::create_dir_all(dir.join("masks"))?;
    (0..n)
        .map(|i| {
            let id = format!("case{i:03}");
            let (img, mask) =
                styled_lesion_image(width, height, seed.wrapping_add(i as u64 * 7919), style);
            img.save(dir.join("images").join(format!("{id}.png")))?;
            mask_image(&mask, width, height).save(dir.join("masks").join(format!("{id}.png")))?;
            Ok(id)
        })
        .collect()
}

/// A 0/255 grayscale image of a mask.
pub fn mask_image(mask: &[bool], width: usize, height: usize) -> image::GrayImage {
    image::GrayImage::from_fn(width as u32, height as u32, |x, y| {
        image::Luma([if mask[y as usize * width + x as usize] {
            255
        } else {
            0
        }])
    })
}

/// Per rater, the optic disc mask and the cup mask.
pub type RaterMasks = Vec<(Vec<bool>, Vec<bool>)>;

/// A fundus-like image: an orange retina with a bright optic disc and a brighter cup
/// inside it. Returns the image and, per rater, the (disc, cup) masks; raters disagree by
/// a few percent of the radius, as REFUGE's do.
pub fn fundus_image(
    width: usize,
    height: usize,
    seed: u64,
    raters: usize,
) -> (RgbImage, RaterMasks) {
    let mut rng = SplitMix(seed);
    let cx = width as f64 * (0.35 + 0.3 * rng.uniform());
    let cy = height as f64 * (0.35 + 0.3 * rng.uniform());
    let r_disc = width.min(height) as f64 * (0.18 + 0.08 * rng.uniform());
    let r_cup = r_disc * (0.45 + 0.15 * rng.uniform());
    let dist = |x: usize, y: usize| (x as f64 + 0.5 - cx).hypot(y as f64 + 0.5 - cy);
    let mut img = RgbImage::new(width as u32, height as u32);
    for y in 0..height {
        for x in 0..width {
            let d = dist(x, y);
            let noise = rng.uniform() * 25.0;
            let px = if d <= r_cup {
                [245.0, 235.0, 190.0 + noise]
            } else if d <= r_disc {
                [225.0 + noise * 0.5, 180.0 + noise, 110.0]
            } else {
                [170.0 + noise, 70.0 + noise, 30.0]
            };
            img.put_pixel(
                x as u32,
                y as u32,
                image::Rgb(px.map(|v| v.min(255.0) as u8)),
            );
        }
    }
    let masks = (0..raters)
        .map(|r| {
            let k = 1.0 + 0.05 * (r as f64 - (raters as f64 - 1.0) / 2.0);
            let circle = |radius: f64| -> Vec<bool> {
                (0..width * height)
                    .map(|i| dist(i % width, i / width) <= radius * k)
                    .collect()
            };
            (circle(r_disc), circle(r_cup))
        })
        .collect();
    (img, masks)
}

/// Writes `n` fundus cases in the REFUGE layout under `dir/train/`:
/// `<id>/<id>.png` and `<id>/<id>_seg_{disc,cup}_<rater>.png`. Returns the ids.
pub fn write_refuge_dataset(
    dir: &std::path::Path,
    n: usize,
    (width, height): (usize, usize),
    seed: u64,
    raters: usize,
) -> anyhow::Result<Vec<String>> {
    (0..n)
        .map(|i| {
            let id = format!("g{i:04}");
            let case = dir.join("train").join(&id);
            std::fs::create_dir_all(&case)?;
            let (img, masks) =
                fundus_image(width, height, seed.wrapping_add(i as u64 * 7919), raters);
            img.save(case.join(format!("{id}.png")))?;
            for (r, (disc, cup)) in masks.iter().enumerate() {
                let save = |m: &[bool], class: &str| {
                    mask_image(m, width, height)
                        .save(case.join(format!("{id}_seg_{class}_{}.png", r + 1)))
                };
                save(disc, "disc")?;
                save(cup, "cup")?;
            }
            Ok(id)
        })
        .collect()
}

/// A generated volume case: a bright ellipsoid (class 1) and a dimmer ball (class 2) in a
/// speckled background, MRI-like values; (image values x-fastest, classes per voxel).
pub fn blob_volume(dims: [usize; 3], seed: u64) -> (Vec<f32>, Vec<u8>) {
    let [nx, ny, nz] = dims;
    let mut rng = SplitMix(seed);
    let f = |n: usize, lo: f64, span: f64, r: &mut SplitMix| n as f64 * (lo + span * r.uniform());
    let c1 = [
        f(nx, 0.25, 0.1, &mut rng),
        f(ny, 0.35, 0.3, &mut rng),
        f(nz, 0.4, 0.2, &mut rng),
    ];
    let r1 = [
        f(nx, 0.16, 0.06, &mut rng),
        f(ny, 0.2, 0.08, &mut rng),
        f(nz, 0.25, 0.1, &mut rng),
    ];
    let c2 = [
        f(nx, 0.7, 0.08, &mut rng),
        f(ny, 0.35, 0.3, &mut rng),
        f(nz, 0.4, 0.2, &mut rng),
    ];
    let r2 = nx.min(ny) as f64 * (0.15 + 0.05 * rng.uniform());
    let mut values = Vec::with_capacity(nx * ny * nz);
    let mut classes = Vec::with_capacity(nx * ny * nz);
    for k in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let p = [x as f64 + 0.5, y as f64 + 0.5, k as f64 + 0.5];
                let e: f64 = (0..3).map(|i| ((p[i] - c1[i]) / r1[i]).powi(2)).sum();
                let b: f64 = (0..2).map(|i| ((p[i] - c2[i]) / r2).powi(2)).sum::<f64>()
                    + ((p[2] - c2[2]) / (nz as f64 * 0.3)).powi(2);
                let noise = rng.uniform() as f32 * 60.0;
                let (class, v) = if e <= 1.0 {
                    (1, 700.0 + noise)
                } else if b <= 1.0 {
                    (2, 420.0 + noise)
                } else {
                    (0, 80.0 + 2.0 * noise)
                };
                classes.push(class);
                values.push(v);
            }
        }
    }
    (values, classes)
}

/// Writes `n` generated volume cases in the Decathlon layout (`imagesTr/`, `labelsTr/`,
/// `dataset.json` with modality MRI and labels 1 `bright`, 2 `dim`); returns the ids.
pub fn write_decathlon_dataset(
    dir: &std::path::Path,
    n: usize,
    dims: [usize; 3],
    spacing: [f32; 3],
    seed: u64,
) -> anyhow::Result<Vec<String>> {
    use crate::io::nifti::{write_image, write_labels, NiftiVolume};
    use crate::io::Volume;
    std::fs::create_dir_all(dir.join("imagesTr"))?;
    std::fs::create_dir_all(dir.join("labelsTr"))?;
    let mut affine = [[0f32; 4]; 4];
    for i in 0..3 {
        affine[i][i] = spacing[i];
    }
    affine[3][3] = 1.0;
    let mut training = vec![];
    let mut ids = vec![];
    for i in 0..n {
        let id = format!("blob_{i:03}");
        let (data, classes) = blob_volume(dims, seed.wrapping_add(i as u64 * 7919));
        let image = NiftiVolume::from_volume(Volume {
            dims,
            data,
            spacing,
            affine,
        });
        write_image(&dir.join(format!("imagesTr/{id}.nii.gz")), &image)?;
        write_labels(&dir.join(format!("labelsTr/{id}.nii.gz")), &classes, &image)?;
        training.push(serde_json::json!({
            "image": format!("./imagesTr/{id}.nii.gz"),
            "label": format!("./labelsTr/{id}.nii.gz"),
        }));
        ids.push(id);
    }
    let json = serde_json::json!({
        "name": "generated blobs",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "bright", "2": "dim"},
        "numTraining": n,
        "training": training,
    });
    std::fs::write(
        dir.join("dataset.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(ids)
}
