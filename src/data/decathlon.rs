//! The Medical Segmentation Decathlon layout, which BTCV also uses: `dataset.json` lists
//! `training` (and optionally `validation`) cases as `{"image": "./imagesTr/x.nii.gz",
//! "label": "./labelsTr/x.nii.gz"}`, names the modality and the label values.

use crate::io::dicom::{self, SeriesChoice};
use crate::io::nifti::NiftiVolume;
use crate::io::orientation::{Axis, Reorientation};
use crate::io::volume_file;
use crate::io::Volume;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One volume and its label volume.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeCase {
    pub id: String,
    pub image: PathBuf,
    pub label: PathBuf,
    /// The slices its volumes are cut into (`load_case` turns them into that frame).
    pub axis: Axis,
    /// The series of a DICOM study its image is (dataset.json's `"series"`, else `--series`).
    pub series: Option<SeriesChoice>,
}

#[derive(Debug, Clone)]
pub struct Decathlon {
    pub root: PathBuf,
    /// The first modality `dataset.json` names (`CT`, `MRI`, ...), if any.
    pub modality: Option<String>,
    /// Label value -> name, background (0) left out.
    pub labels: BTreeMap<u32, String>,
    pub training: Vec<VolumeCase>,
    pub validation: Vec<VolumeCase>,
}

#[derive(Deserialize)]
struct DatasetJson {
    #[serde(default)]
    modality: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    training: Vec<Entry>,
    #[serde(default)]
    validation: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    image: String,
    label: String,
    /// The series of a DICOM study to read, by number or UID.
    #[serde(default)]
    series: Option<String>,
}

impl Decathlon {
    /// `open`, its volumes to be cut into `axis` slices, and `series` read from DICOM
    /// studies whose entry names none.
    pub fn open_along(root: &Path, axis: Axis, series: Option<&str>) -> Result<Self> {
        let mut ds = Self::open(root)?;
        for case in ds.training.iter_mut().chain(ds.validation.iter_mut()) {
            case.axis = axis;
            if case.series.is_none() {
                case.series = series.map(SeriesChoice::parse);
            }
        }
        Ok(ds)
    }

    /// Reads `root/dataset.json`; every listed file must exist. Volumes are cut into axial
    /// slices.
    pub fn open(root: &Path) -> Result<Self> {
        let path = root.join("dataset.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: cannot read (a Decathlon dataset needs one)",
                path.display()
            )
        })?;
        let json: DatasetJson = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected {{\"training\": [{{\"image\": ..., \"label\": ...}}], \"labels\": {{...}}, \"modality\": {{...}}}}",
                path.display()
            )
        })?;
        let mut labels = BTreeMap::new();
        for (value, name) in &json.labels {
            let v: u32 = value.trim().parse().with_context(|| {
                format!("{}: label key `{value}` is not an integer", path.display())
            })?;
            if v != 0 {
                labels.insert(v, name.clone());
            }
        }
        let cases = |entries: &[Entry]| -> Result<Vec<VolumeCase>> {
            entries.iter().map(|e| case(root, &path, e)).collect()
        };
        let training = cases(&json.training)?;
        if training.is_empty() {
            bail!("{}: the `training` list is empty", path.display());
        }
        Ok(Self {
            root: root.to_path_buf(),
            modality: json.modality.values().next().cloned(),
            labels,
            training,
            validation: cases(&json.validation)?,
        })
    }

    /// How slices become 8-bit images, in words: `intensity` when given (`--window`), else
    /// the modality's window, else a window chosen per volume.
    pub fn intensity_how(&self, intensity: Option<&crate::io::Intensity>) -> String {
        use crate::io::Intensity;
        match (intensity, &self.modality) {
            (Some(i), _) => format!("{i:?} (--window)"),
            (None, Some(m)) => format!(
                "{:?} (modality `{m}` in dataset.json)",
                Intensity::for_modality(m).0
            ),
            (None, None) => "chosen per volume from its values".to_string(),
        }
    }

    /// Names of the classes `labels` makes: dataset.json's names, unless the labels were
    /// remapped (then `class N`).
    pub fn class_names(&self, labels: &LabelMap, remapped: bool) -> Vec<String> {
        (1..=labels.classes())
            .map(|c| {
                let from_json = (!remapped)
                    .then(|| self.labels.values().nth(c - 1).cloned())
                    .flatten();
                from_json.unwrap_or_else(|| format!("class {c}"))
            })
            .collect()
    }

    /// The training cases without the last `holdout`, and those last ones (sorted by id).
    pub fn holdout(&self, holdout: usize) -> (Vec<VolumeCase>, Vec<VolumeCase>) {
        let mut all = self.training.clone();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let keep = all.len().saturating_sub(holdout);
        let test = all.split_off(keep);
        (all, test)
    }
}

fn case(root: &Path, json_path: &Path, e: &Entry) -> Result<VolumeCase> {
    let resolve = |rel: &str| -> Result<PathBuf> {
        let p = root.join(rel.trim_start_matches("./"));
        // A file, or a folder holding a DICOM series.
        if !p.exists() {
            bail!(
                "{}: lists {rel}, but {} does not exist",
                json_path.display(),
                p.display()
            );
        }
        Ok(p)
    };
    let image = resolve(&e.image)?;
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = name
        .strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .or_else(|| name.strip_suffix(".nrrd"))
        .unwrap_or(&name)
        .to_string();
    Ok(VolumeCase {
        id,
        image,
        label: resolve(&e.label)?,
        axis: Axis::Axial,
        series: e.series.as_deref().map(SeriesChoice::parse),
    })
}

/// Reads a case's image and label volumes (their shapes must agree), both turned into the
/// canonical frame of the case's axis by the image's affine.
pub fn load_case(case: &VolumeCase) -> Result<(NiftiVolume, NiftiVolume)> {
    let (image, label) = load_stored(case)?;
    let turn = Reorientation::of(&image.volume.affine, image.volume.dims, case.axis);
    if turn.is_identity() {
        return Ok((image, label));
    }
    Ok((
        NiftiVolume::from_volume(turn.volume(&image.volume)),
        NiftiVolume::from_volume(turn.volume(&label.volume)),
    ))
}

/// The image as stored (NIfTI, or DICOM: a series folder or file) and its labels: NIfTI,
/// or a DICOM Segmentation of that series.
fn load_stored(case: &VolumeCase) -> Result<(NiftiVolume, NiftiVolume)> {
    let (image, source) = volume_file::read_source(&case.image, case.series.as_ref())?;
    let label = match source {
        Some(source) if dicom::study::is_dicom_file(&case.label) => {
            let labels = dicom::seg_labels::read(&case.label, &source, image.volume.dims)?;
            let v = &image.volume;
            NiftiVolume::from_volume(Volume {
                dims: v.dims,
                data: labels.into_iter().map(f32::from).collect(),
                spacing: v.spacing,
                affine: v.affine,
            })
        }
        _ => volume_file::read(&case.label, None)?,
    };
    if image.volume.dims != label.volume.dims {
        bail!(
            "case {}: image {} is {:?} but label {} is {:?}",
            case.id,
            case.image.display(),
            image.volume.dims,
            case.label.display(),
            label.volume.dims
        );
    }
    Ok((image, label))
}

/// Which label values become which classes: `--labels 1,2,6` makes values 1, 2, 6 classes
/// 1, 2, 3; a JSON map `{"6": 1, "7": 1}` merges values. Values not named become 0.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    map: BTreeMap<u32, u8>,
}

impl LabelMap {
    /// Every nonzero value of `labels` as its own class, in order.
    pub fn identity(labels: &BTreeMap<u32, String>) -> Result<Self> {
        Self::from_values(&labels.keys().copied().collect::<Vec<_>>())
    }

    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.starts_with('{') {
            let raw: BTreeMap<String, u32> = serde_json::from_str(s).with_context(|| {
                format!("labels `{s}`: expected a JSON map like {{\"6\": 1, \"7\": 1}}")
            })?;
            let mut map = BTreeMap::new();
            for (k, v) in raw {
                let key: u32 = k
                    .trim()
                    .parse()
                    .with_context(|| format!("labels `{s}`: key `{k}` is not an integer"))?;
                let class = u8::try_from(v).ok().filter(|c| *c > 0).with_context(|| {
                    format!("labels `{s}`: class {v} for value {key} must be 1..=255")
                })?;
                map.insert(key, class);
            }
            return Ok(Self { map });
        }
        let values = s
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .with_context(|| format!("labels `{s}`: `{v}` is not an integer"))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_values(&values)
    }

    fn from_values(values: &[u32]) -> Result<Self> {
        if values.len() > 255 {
            bail!("{} labels: at most 255 classes", values.len());
        }
        let mut map = BTreeMap::new();
        for (i, &v) in values.iter().enumerate() {
            if v == 0 {
                bail!("label 0 is the background and cannot be a class");
            }
            if map.insert(v, (i + 1) as u8).is_some() {
                bail!("label {v} is listed twice");
            }
        }
        Ok(Self { map })
    }

    /// The number of classes (the largest class index).
    pub fn classes(&self) -> usize {
        self.map.values().copied().max().unwrap_or(0) as usize
    }

    /// Class per voxel from raw label values (rounded: label volumes may be stored as float).
    pub fn apply(&self, values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .map(|&v| {
                let key = v.round();
                if key < 0.0 || !key.is_finite() {
                    return 0;
                }
                self.map.get(&(key as u32)).copied().unwrap_or(0)
            })
            .collect()
    }
}
