//! The series of a DICOM study: every image file under a folder (nested folders included),
//! grouped by Series Instance UID from their headers alone, and the choice of one series.

use super::guard;
use anyhow::{bail, Context, Result};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Folders nested deeper than this under the one given are not searched.
const MAX_FOLDER_DEPTH: usize = 16;

/// One image series, as its files' headers describe it.
#[derive(Debug, Clone)]
pub struct Series {
    pub uid: String,
    pub number: Option<i64>,
    pub description: String,
    pub modality: String,
    /// (rows, columns) of its first file.
    pub size: (usize, usize),
    /// Its image files, sorted by path.
    pub files: Vec<PathBuf>,
}

/// How `--series` names a series: its number, or its UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeriesChoice {
    Number(i64),
    Uid(String),
}

impl SeriesChoice {
    /// A number is digits alone; a UID has dots.
    pub fn parse(text: &str) -> Self {
        match text.trim().parse::<i64>() {
            Ok(n) if !text.contains('.') => Self::Number(n),
            _ => Self::Uid(text.trim().to_string()),
        }
    }
}

/// True when `path` starts like a DICOM file (the magic after the preamble, or at 0).
pub fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    head.get(128..132).filter(|_| n >= 132) == Some(b"DICM".as_slice())
        || head.get(..4).filter(|_| n >= 4) == Some(b"DICM".as_slice())
}

/// Opens a DICOM file after `guard::check_lengths`, reading up to its pixel data or all of
/// it; None when it holds no pixel data.
pub fn open(path: &Path, with_pixels: bool) -> Result<Option<DefaultDicomObject>> {
    let limit = crate::io::DecodeLimits::from_env().max_decompressed_bytes;
    if !guard::check_lengths(path, limit)?.pixel_data {
        return Ok(None);
    }
    let options = OpenFileOptions::new();
    let options = if with_pixels {
        options
    } else {
        options.read_until(tags::PIXEL_DATA)
    };
    options
        .open_file(path)
        .map(Some)
        .with_context(|| format!("{}: not a readable DICOM file", path.display()))
}

/// The image series in `path` (a folder searched to any depth, or one file), in order of
/// series number. Files without the DICOM magic are skipped; a DICOM file that cannot be
/// read is an error naming it, never a silently missing slice. Files without pixel data
/// (DICOMDIR, structured reports) are not series.
pub fn scan(path: &Path) -> Result<Vec<Series>> {
    let mut by_uid: BTreeMap<String, Series> = BTreeMap::new();
    let mut without_pixels = vec![];
    for file in dicom_files(path)? {
        let Some(obj) = open(&file, false)? else {
            without_pixels.push(file);
            continue;
        };
        let uid = text(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        let series = by_uid.entry(uid.clone()).or_insert_with(|| Series {
            uid,
            number: text(&obj, tags::SERIES_NUMBER).and_then(|n| n.parse().ok()),
            description: text(&obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
            modality: text(&obj, tags::MODALITY).unwrap_or_default(),
            size: (int(&obj, tags::ROWS), int(&obj, tags::COLUMNS)),
            files: vec![],
        });
        series.files.push(file);
    }
    if !without_pixels.is_empty() {
        tracing::warn!(
            "{}: {} DICOM file(s) without pixel data passed over (directories, reports, \
             structure sets, or a file cut before its pixels), the first {}",
            path.display(),
            without_pixels.len(),
            without_pixels
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    let mut series: Vec<Series> = by_uid.into_values().collect();
    series.sort_by(|a, b| (a.number, &a.uid).cmp(&(b.number, &b.uid)));
    Ok(series)
}

/// The one series `choice` names in `path`, or its only series. Several series and no
/// choice is refused with the list.
pub fn pick(path: &Path, choice: Option<&SeriesChoice>) -> Result<Series> {
    let all = scan(path)?;
    if all.is_empty() {
        bail!("{}: no DICOM image files found", path.display());
    }
    let chosen: Vec<&Series> = match choice {
        None => all.iter().collect(),
        Some(SeriesChoice::Number(n)) => all.iter().filter(|s| s.number == Some(*n)).collect(),
        Some(SeriesChoice::Uid(uid)) => all.iter().filter(|s| &s.uid == uid).collect(),
    };
    match (chosen.as_slice(), choice) {
        ([one], _) => Ok((*one).clone()),
        ([], Some(c)) => bail!(
            "{}: no series {}; it holds:\n{}",
            path.display(),
            describe(c),
            table(&all)
        ),
        (_, Some(c)) => bail!(
            "{}: several series match {}; choose by UID:\n{}",
            path.display(),
            describe(c),
            table(&all)
        ),
        (_, None) => bail!(
            "{}: holds {} series; choose one with --series NUMBER or --series UID:\n{}",
            path.display(),
            all.len(),
            table(&all)
        ),
    }
}

fn describe(choice: &SeriesChoice) -> String {
    match choice {
        SeriesChoice::Number(n) => format!("number {n}"),
        SeriesChoice::Uid(uid) => format!("with UID {uid}"),
    }
}

/// One line per series: number, modality, slices, size, description, UID.
pub fn table(series: &[Series]) -> String {
    let mut out = format!(
        "{:>6}  {:<8} {:>6}  {:>9}  {:<24} {}\n",
        "number", "modality", "slices", "size", "description", "series UID"
    );
    for s in series {
        let number = s
            .number
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into());
        let size = format!("{}x{}", s.size.1, s.size.0);
        let description: String = s.description.chars().take(24).collect();
        out.push_str(&format!(
            "{number:>6}  {:<8} {:>6}  {size:>9}  {description:<24} {}\n",
            s.modality,
            s.files.len(),
            s.uid
        ));
    }
    out
}

/// DICOM files under `path` (or `path` itself), sorted, to `MAX_FOLDER_DEPTH` levels.
fn dicom_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        if !is_dicom_file(path) {
            bail!("{}: not a DICOM file (no DICM magic)", path.display());
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut found = vec![];
    let mut folders = vec![(path.to_path_buf(), 0)];
    while let Some((dir, depth)) = folders.pop() {
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("{}: cannot list the DICOM folder", dir.display()))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let p = entry.path();
            // Linked folders are not followed: a link to a parent would list files again.
            let linked = entry.file_type().is_ok_and(|t| t.is_symlink());
            if p.is_dir() && !linked && depth < MAX_FOLDER_DEPTH {
                folders.push((p, depth + 1));
            } else if p.is_file() && is_dicom_file(&p) {
                found.push(p);
            }
        }
    }
    found.sort();
    Ok(found)
}

pub(super) fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok().flatten()?;
    e.to_str().ok().map(|s| s.trim().to_string())
}

fn int(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> usize {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(0) as usize
}
