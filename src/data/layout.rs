//! Dataset layouts on disk: the generic folder, ISIC 2016 part 1 and REFUGE (multi-rater),
//! discovered into train/val/test lists of items.

use crate::data::synthetic::SplitMix;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// `images/<id>.<ext>` and `masks/<id>.png`, split by split.json or sub-folders.
    Folder,
    /// ISIC 2016 part 1 (skin lesions).
    Isic,
    /// REFUGE fundus images with several raters' disc and cup masks.
    Refuge,
    /// Volumes in the Medical Segmentation Decathlon layout (BTCV too): `dataset.json`,
    /// `imagesTr/`, `labelsTr/` (NIfTI); `msa train --3d`, `msa eval`.
    Decathlon,
}

/// One case: an image and, per class, the mask files of its raters (one for most data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub image: PathBuf,
    pub masks: Vec<Vec<PathBuf>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Splits {
    pub classes: Vec<String>,
    pub train: Vec<Item>,
    pub val: Vec<Item>,
    pub test: Vec<Item>,
    /// How the split was made, for the run folder.
    pub how: String,
}

impl Splits {
    /// The items an evaluation covers: the test split where the layout defines one.
    pub fn eval_items(&self) -> Vec<Item> {
        if !self.test.is_empty() {
            return self.test.clone();
        }
        let mut all = self.train.clone();
        all.extend(self.val.iter().cloned());
        all
    }

    /// The ids of each split, as split.json writes them.
    pub fn ids(&self) -> BTreeMap<&'static str, Vec<String>> {
        let ids = |v: &[Item]| v.iter().map(|i| i.id.clone()).collect();
        BTreeMap::from([
            ("train", ids(&self.train)),
            ("val", ids(&self.val)),
            ("test", ids(&self.test)),
        ])
    }
}

const IMAGE_EXTS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

pub fn discover(kind: DatasetKind, dir: &Path, seed: u64, val_fraction: f64) -> Result<Splits> {
    if !dir.is_dir() {
        // A not-found io error, so that callers can tell a missing folder from a bad one.
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("dataset folder {} does not exist", dir.display()),
        )
        .into());
    }
    match kind {
        DatasetKind::Folder => folder(dir, seed, val_fraction),
        DatasetKind::Isic => isic(dir, seed, val_fraction),
        DatasetKind::Refuge => refuge(dir, seed, val_fraction),
        DatasetKind::Decathlon => bail!(
            "{}: Decathlon volumes train with `msa train --dataset decathlon --3d` and evaluate with `msa eval --dataset decathlon`",
            dir.display()
        ),
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .map(|e| IMAGE_EXTS.contains(&e.to_string_lossy().to_lowercase().as_str()))
        .unwrap_or(false)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// One class, one rater: the mask file if it exists, else no file (the check names the
/// image as having no mask).
fn one_mask(path: PathBuf) -> Vec<Vec<PathBuf>> {
    vec![if path.exists() { vec![path] } else { vec![] }]
}

/// Items of a `images/` + `masks/` pair; an image without a mask keeps an empty mask list
/// so that the check reports it by name.
fn folder_items(dir: &Path) -> Result<Vec<Item>> {
    let images = dir.join("images");
    let masks = dir.join("masks");
    if !images.is_dir() {
        bail!(
            "{}: no `images/` folder (expected images/<id>.<png|jpg|tif> and masks/<id>.png)",
            dir.display()
        );
    }
    list_dir(&images)?
        .into_iter()
        .filter(|p| is_image(p))
        .map(|image| {
            let id = stem(&image);
            let masks = one_mask(masks.join(format!("{id}.png")));
            Ok(Item { id, image, masks })
        })
        .collect()
}

/// Seeded shuffle and cut: (train, val).
fn random_split(mut items: Vec<Item>, seed: u64, val_fraction: f64) -> (Vec<Item>, Vec<Item>) {
    let mut rng = SplitMix(seed ^ 0x5EED_0000_0000_5EED);
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
    let n_val = ((items.len() as f64) * val_fraction).round() as usize;
    let n_val = n_val.clamp(usize::from(items.len() > 1), items.len().saturating_sub(1));
    let val = items.split_off(items.len() - n_val);
    (items, val)
}

fn folder(dir: &Path, seed: u64, val_fraction: f64) -> Result<Splits> {
    let classes = vec!["foreground".to_string()];
    let split_json = dir.join("split.json");
    if split_json.exists() {
        let text = std::fs::read_to_string(&split_json)?;
        let ids: BTreeMap<String, Vec<String>> =
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: expected {{\"train\": [...], \"val\": [...], \"test\": [...]}}",
                    split_json.display()
                )
            })?;
        let all: BTreeMap<String, Item> = folder_items(dir)?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let pick = |name: &str| -> Result<Vec<Item>> {
            ids.get(name)
                .map(|v| v.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|id| {
                    all.get(id).cloned().with_context(|| {
                        format!(
                            "{}: `{id}` in \"{name}\" has no image in images/",
                            split_json.display()
                        )
                    })
                })
                .collect()
        };
        return Ok(Splits {
            classes,
            train: pick("train")?,
            val: pick("val")?,
            test: pick("test")?,
            how: format!("from {}", split_json.display()),
        });
    }
    if dir.join("train").is_dir() {
        let sub = |name: &str| -> Result<Vec<Item>> {
            let d = dir.join(name);
            if d.is_dir() {
                folder_items(&d)
            } else {
                Ok(vec![])
            }
        };
        return Ok(Splits {
            classes,
            train: sub("train")?,
            val: sub("val")?,
            test: sub("test")?,
            how: "from train/ val/ test/ sub-folders".into(),
        });
    }
    let (train, val) = random_split(folder_items(dir)?, seed, val_fraction);
    Ok(Splits {
        classes,
        train,
        val,
        test: vec![],
        how: format!(
            "seeded random split, seed {seed}, {:.0}% validation",
            val_fraction * 100.0
        ),
    })
}

/// ISIC 2016 part 1: `ISBI2016_ISIC_Part1_{Training,Test}_Data/ISIC_<n>.jpg` and
/// `..._GroundTruth/ISIC_<n>_Segmentation.png`. Where `ISBI2016_ISIC_Part1_<part>_GroundTruth.csv`
/// is present (rows `index,image,mask`, paths relative to DIR, as the PyTorch MSA code reads
/// them) it lists the part's cases; otherwise the folders are scanned.
fn isic(dir: &Path, seed: u64, val_fraction: f64) -> Result<Splits> {
    let part = |name: &str| -> Result<Vec<Item>> {
        let csv = dir.join(format!("ISBI2016_ISIC_Part1_{name}_GroundTruth.csv"));
        if csv.is_file() {
            return isic_csv(dir, &csv);
        }
        let data = dir.join(format!("ISBI2016_ISIC_Part1_{name}_Data"));
        let truth = dir.join(format!("ISBI2016_ISIC_Part1_{name}_GroundTruth"));
        if !data.is_dir() {
            return Ok(vec![]);
        }
        Ok(list_dir(&data)?
            .into_iter()
            .filter(|p| is_image(p))
            .map(|image| {
                let id = stem(&image);
                let masks = one_mask(truth.join(format!("{id}_Segmentation.png")));
                Item { id, image, masks }
            })
            .collect())
    };
    let training = part("Training")?;
    if training.is_empty() {
        bail!(
            "{}: no ISBI2016_ISIC_Part1_Training_Data/ folder with images \
             (nor ISBI2016_ISIC_Part1_Training_GroundTruth.csv)",
            dir.display()
        );
    }
    let (train, val) = random_split(training, seed, val_fraction);
    Ok(Splits {
        classes: vec!["lesion".into()],
        train,
        val,
        test: part("Test")?,
        how: format!("ISIC Training split into train/val (seed {seed}); Test as test"),
    })
}

/// The cases an ISIC CSV lists: the last two fields of each row are the image and mask
/// paths relative to `dir`; a header row (no image path in it) is skipped. Files that do
/// not exist are kept, so that the check names them.
fn isic_csv(dir: &Path, csv: &Path) -> Result<Vec<Item>> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut items = vec![];
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line
            .split(',')
            .map(|f| f.trim().trim_matches('"'))
            .collect();
        let [.., image, mask] = fields.as_slice() else {
            bail!(
                "{} line {}: expected `index,image,mask`, found `{line}`",
                csv.display(),
                n + 1
            );
        };
        if !is_image(Path::new(image)) {
            if n == 0 {
                continue; // header
            }
            bail!(
                "{} line {}: `{image}` is not an image path (.png, .jpg, .bmp, .tif)",
                csv.display(),
                n + 1
            );
        }
        let image = dir.join(image);
        items.push(Item {
            id: stem(&image),
            image,
            masks: vec![vec![dir.join(mask)]],
        });
    }
    if items.is_empty() {
        bail!("{}: lists no cases", csv.display());
    }
    Ok(items)
}

/// REFUGE: `<split>/<case>/<case>.<jpg|png>` with `<case>_seg_{disc,cup}_<rater>.png`;
/// splits are `Training-400`/`train`, `Validation-400`/`val`, `Test-400`/`test`.
fn refuge(dir: &Path, seed: u64, val_fraction: f64) -> Result<Splits> {
    let part = |names: &[&str]| -> Result<Vec<Item>> {
        let Some(d) = names.iter().map(|n| dir.join(n)).find(|d| d.is_dir()) else {
            return Ok(vec![]);
        };
        let mut items = vec![];
        for case in list_dir(&d)?.into_iter().filter(|p| p.is_dir()) {
            let id = stem(&case);
            let files = list_dir(&case)?;
            let image = files
                .iter()
                .find(|p| is_image(p) && stem(p) == id)
                .cloned()
                .unwrap_or_else(|| case.join(format!("{id}.jpg")));
            let raters = |class: &str| -> Vec<PathBuf> {
                let prefix = format!("{id}_seg_{class}_");
                files
                    .iter()
                    .filter(|p| stem(p).starts_with(&prefix))
                    .cloned()
                    .collect()
            };
            let masks = vec![raters("disc"), raters("cup")];
            items.push(Item { id, image, masks });
        }
        Ok(items)
    };
    let train = part(&["Training-400", "train"])?;
    if train.is_empty() {
        bail!(
            "{}: no REFUGE cases under Training-400/ or train/",
            dir.display()
        );
    }
    let mut val = part(&["Validation-400", "val"])?;
    let (train, how) = if val.is_empty() {
        let (t, v) = random_split(train, seed, val_fraction);
        val = v;
        (
            t,
            format!("REFUGE training split into train/val (seed {seed})"),
        )
    } else {
        (train, "REFUGE splits from folders".to_string())
    };
    Ok(Splits {
        classes: vec!["disc".into(), "cup".into()],
        train,
        val,
        test: part(&["Test-400", "test"])?,
        how,
    })
}
