//! What a compressed DICOM frame must hold before a decoder sees it: its end marker (the
//! JPEG and JPEG 2000 decoders fill in what is missing), and the size the DICOM header
//! gives (dicom-rs copies the decoded frame into a buffer of the header's size, and a
//! larger one made it panic; a frame's own header claiming 65535 x 65535 would be
//! allocated).

use anyhow::{bail, Context, Result};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use std::path::Path;

const JPEG: [&str; 4] = [
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
];
const JPEG_2000: [&str; 2] = ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"];

/// Checks the one compressed frame of `obj` (transfer syntax `ts`) against its header's
/// `rows` x `columns`; native pixel data passes.
pub fn check(
    path: &Path,
    obj: &DefaultDicomObject,
    ts: &str,
    rows: usize,
    columns: usize,
) -> Result<()> {
    let fragments = obj
        .element(tags::PIXEL_DATA)
        .ok()
        .and_then(|e| e.value().fragments().map(|f| f.concat()));
    let Some(frame) = fragments else {
        return Ok(());
    };
    let at = || format!("{}: its compressed frame", path.display());
    let size = if JPEG.contains(&ts) {
        crate::io::image::jpeg_complete(&frame).with_context(at)?;
        jpeg_size(&frame)
    } else if JPEG_2000.contains(&ts) {
        let end = frame.strip_suffix(&[0]).unwrap_or(&frame);
        if !end.ends_with(&[0xFF, 0xD9]) {
            bail!(
                "{}: truncated JPEG 2000 frame: {} bytes without the end-of-codestream marker",
                path.display(),
                frame.len()
            );
        }
        j2k_size(&frame)
    } else {
        return Ok(());
    };
    match size {
        Some(s) if s == (rows, columns) => Ok(()),
        Some((h, w)) => bail!(
            "{} is {w} x {h} pixels, but the header says {columns} x {rows}",
            at()
        ),
        None => bail!(
            "{}: no frame header (SOF or SIZ marker) in the codestream",
            at()
        ),
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<usize> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize)
}

fn u32_at(b: &[u8], i: usize) -> Option<usize> {
    let bytes = [*b.get(i)?, *b.get(i + 1)?, *b.get(i + 2)?, *b.get(i + 3)?];
    Some(u32::from_be_bytes(bytes) as usize)
}

/// (height, width) from a JPEG's start-of-frame segment, walking the marker segments.
fn jpeg_size(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 2; // after SOI
    while i + 4 <= b.len() {
        if *b.get(i)? != 0xFF {
            return None;
        }
        let marker = *b.get(i + 1)?;
        let sof = matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF);
        if sof {
            return Some((u16_at(b, i + 5)?, u16_at(b, i + 7)?));
        }
        i += 2 + u16_at(b, i + 2)?;
    }
    None
}

/// (height, width) from a JPEG 2000 codestream's SIZ segment (it follows SOC).
fn j2k_size(b: &[u8]) -> Option<(usize, usize)> {
    let siz = b.windows(2).position(|w| w == [0xFF, 0x51])?;
    let (x, y) = (u32_at(b, siz + 6)?, u32_at(b, siz + 10)?);
    let (x0, y0) = (u32_at(b, siz + 14)?, u32_at(b, siz + 18)?);
    Some((y.checked_sub(y0)?, x.checked_sub(x0)?))
}
