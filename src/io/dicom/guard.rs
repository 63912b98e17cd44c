//! A walk over a DICOM file's element stream before dicom-rs reads it. dicom-rs sizes each
//! value buffer from the length the element claims, so a 642-byte file claiming 4 GB made
//! it reserve and zero-fill 4 GB. The walk reads only headers, in the order dicom-rs would,
//! and refuses a file in which a length claims more than the bytes left.

use anyhow::{bail, Context, Result};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

const UNDEFINED: u32 = u32::MAX;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const IMPLICIT: &str = "1.2.840.10008.1.2";
/// Media Storage Directory (DICOMDIR): an index of files, never read past its meta group.
const DIRECTORY: &str = "1.2.840.10008.1.3.10";
/// Sequences nested deeper than this are refused (real files nest a handful deep).
const MAX_DEPTH: usize = 64;

/// What the walk saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outline {
    /// Pixel Data at the top level of the data set.
    pub pixel_data: bool,
}

/// Refuses `path` when an element or item in it claims more bytes than follow it. Files
/// that are not DICOM, or that dicom-rs will refuse anyway, pass: the walk stops where
/// the parser would stop.
pub fn check_lengths(path: &Path, max_inflated: u64) -> Result<Outline> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("{}: cannot read its size", path.display()))?
        .len();
    let found = walk_file(BufReader::new(file), len, max_inflated);
    found.with_context(|| format!("{}: refused before parsing", path.display()))
}

/// `check_lengths` for a file held in memory.
pub fn check_bytes(bytes: &[u8], max_inflated: u64) -> Result<Outline> {
    walk_file(Cursor::new(bytes), bytes.len() as u64, max_inflated)
}

fn walk_file<R: Read + Seek>(src: R, len: u64, max_inflated: u64) -> Result<Outline> {
    let mut s = Stream {
        src,
        pos: 0,
        len,
        big_endian: false,
        explicit: true,
    };
    let Some(Meta {
        transfer_syntax,
        sop_class,
    }) = s.meta_group()?
    else {
        return Ok(Outline::default());
    };
    if sop_class == DIRECTORY {
        return Ok(Outline::default());
    }
    match encoding(&transfer_syntax) {
        Encoding::Deflated => {
            let mut inflated = Vec::new();
            s.src.seek(SeekFrom::Start(s.pos))?;
            flate2::read::DeflateDecoder::new(&mut s.src)
                .take(max_inflated + 1)
                .read_to_end(&mut inflated)
                .context("the deflated data set does not inflate")?;
            if inflated.len() as u64 > max_inflated {
                bail!("the deflated data set inflates past {max_inflated} bytes (MSA_MAX_DECOMPRESSED_BYTES)");
            }
            let len = inflated.len() as u64;
            Stream {
                src: Cursor::new(inflated),
                pos: 0,
                len,
                big_endian: false,
                explicit: true,
            }
            .data_set()
        }
        Encoding::Implicit => Stream {
            explicit: false,
            ..s
        }
        .data_set(),
        Encoding::BigEndian => Stream {
            big_endian: true,
            ..s
        }
        .data_set(),
        Encoding::Explicit => s.data_set(),
    }
}

/// How a transfer syntax lays out the data set, as dicom-rs's registry says.
enum Encoding {
    Implicit,
    Explicit,
    BigEndian,
    /// Compressed as a whole (deflated explicit VR little endian, JPIP referenced deflate).
    Deflated,
}

fn encoding(uid: &str) -> Encoding {
    use dicom_encoding::transfer_syntax::{Codec, Endianness, TransferSyntaxIndex};
    let Some(ts) = dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(uid) else {
        return Encoding::Explicit;
    };
    match (ts.codec(), ts.endianness()) {
        (Codec::Dataset(_), _) => Encoding::Deflated,
        (_, Endianness::Big) => Encoding::BigEndian,
        _ if uid == IMPLICIT => Encoding::Implicit,
        _ => Encoding::Explicit,
    }
}

/// The file meta facts the walk needs.
#[derive(Default)]
struct Meta {
    transfer_syntax: String,
    sop_class: String,
}

/// What the walk is inside of.
#[derive(Clone, Copy)]
enum Frame {
    /// A sequence or an item of one, ending at a byte offset or at its delimiter.
    Sequence(Option<u64>),
    Item(Option<u64>),
    /// Encapsulated pixel data: items of raw bytes up to a sequence delimiter.
    Fragments,
}

impl Frame {
    fn end(self) -> Option<u64> {
        match self {
            Frame::Sequence(end) | Frame::Item(end) => end,
            Frame::Fragments => None,
        }
    }
}

struct Stream<R> {
    src: R,
    pos: u64,
    len: u64,
    big_endian: bool,
    explicit: bool,
}

impl<R: Read + Seek> Stream<R> {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// `n` bytes, or None at the end of the file.
    fn bytes<const N: usize>(&mut self) -> Result<Option<[u8; N]>> {
        let mut b = [0u8; N];
        match self.src.read_exact(&mut b) {
            Ok(()) => {
                self.pos += N as u64;
                Ok(Some(b))
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn u16(&self, b: [u8; 2]) -> u16 {
        if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&self, b: [u8; 4]) -> u32 {
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// Refuses a value of `len` bytes that the file does not hold.
    fn check(&self, tag: Tag, len: u32) -> Result<()> {
        if len as u64 > self.left() {
            bail!(
                "element {tag} claims {len} bytes at offset {}, but only {} bytes follow",
                self.pos,
                self.left()
            );
        }
        Ok(())
    }

    fn skip(&mut self, tag: Tag, len: u32) -> Result<()> {
        self.check(tag, len)?;
        // Small values are read through, so that a buffered reader keeps its buffer.
        if len <= 4096 {
            std::io::copy(&mut (&mut self.src).take(len as u64), &mut std::io::sink())?;
        } else {
            self.src.seek(SeekFrom::Current(len as i64))?;
        }
        self.pos += len as u64;
        Ok(())
    }

    /// The preamble and the file meta group (explicit VR little endian, led by its group
    /// length, as dicom-rs reads it), or None for a file without the DICOM magic.
    fn meta_group(&mut self) -> Result<Option<Meta>> {
        let Some(head) = self.bytes::<132>()? else {
            return Ok(None);
        };
        if head.get(128..132) != Some(b"DICM".as_slice()) {
            if head.get(..4) != Some(b"DICM".as_slice()) {
                return Ok(None);
            }
            self.src.seek(SeekFrom::Start(4))?;
            self.pos = 4;
        }
        // From here on the file says it is DICOM: what dicom-rs would refuse is an error,
        // not a file to pass over.
        let group = self.header()?;
        let Some((Tag(0x0002, 0x0000), _, 4)) = group else {
            bail!("the file meta group does not start with its group length (0002,0000)");
        };
        let Some(group_length) = self.bytes::<4>()?.map(u32::from_le_bytes) else {
            bail!("the file ends inside its meta group");
        };
        let start = self.pos;
        let mut meta = Meta::default();
        while self.pos - start < group_length as u64 {
            let Some((tag, _, len)) = self.header()? else {
                bail!("the file ends inside its meta group");
            };
            if len == UNDEFINED {
                bail!("meta element {tag} has an undefined length");
            }
            self.check(tag, len)?;
            match tag {
                Tag(0x0002, 0x0002) => meta.sop_class = self.uid(len)?,
                Tag(0x0002, 0x0010) => meta.transfer_syntax = self.uid(len)?,
                _ => self.skip(tag, len)?,
            }
        }
        Ok(Some(meta))
    }

    /// A UID value of `len` bytes (checked against the file already).
    fn uid(&mut self, len: u32) -> Result<String> {
        let mut uid = vec![0u8; len as usize];
        self.src.read_exact(&mut uid)?;
        self.pos += len as u64;
        Ok(String::from_utf8_lossy(&uid)
            .trim_end_matches(['\0', ' '])
            .to_string())
    }

    /// One element header: tag, VR, length. None at the end of the file.
    fn header(&mut self) -> Result<Option<(Tag, VR, u32)>> {
        let Some([a, b, c, d]) = self.bytes::<4>()? else {
            return Ok(None);
        };
        let tag = Tag(self.u16([a, b]), self.u16([c, d]));
        let long = |s: &mut Self| -> Result<Option<u32>> { Ok(s.bytes::<4>()?.map(|b| s.u32(b))) };
        if tag.0 == 0xFFFE || !self.explicit {
            let Some(len) = long(self)? else {
                return Ok(None);
            };
            return Ok(Some((tag, self.implicit_vr(tag), len)));
        }
        let Some(vr) = self.bytes::<2>()? else {
            return Ok(None);
        };
        let vr = VR::from_binary(vr).unwrap_or(VR::UN);
        let len = if short_length(vr) {
            self.bytes::<2>()?.map(|b| self.u16(b) as u32)
        } else {
            match self.bytes::<2>()? {
                Some(_reserved) => long(self)?,
                None => None,
            }
        };
        Ok(len.map(|len| (tag, vr, len)))
    }

    /// The VR dicom-rs gives an implicit-VR element: from the dictionary.
    fn implicit_vr(&self, tag: Tag) -> VR {
        if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
            return VR::OW;
        }
        StandardDataDictionary
            .by_tag(tag)
            .map(|e| e.vr().relaxed())
            .unwrap_or(VR::UN)
    }

    /// The data set after the meta group, down through its sequences and items. Where a
    /// file leaves the structure real files have (a delimiter out of place, an element
    /// where an item belongs), the walk refuses it rather than guess how dicom-rs reads on.
    fn data_set(mut self) -> Result<Outline> {
        let mut outline = Outline::default();
        let mut frames: Vec<Frame> = Vec::new();
        loop {
            while frames
                .last()
                .and_then(|f| f.end())
                .is_some_and(|end| self.pos >= end)
            {
                frames.pop();
            }
            if frames.len() > MAX_DEPTH {
                bail!(
                    "sequences nest deeper than {MAX_DEPTH} at offset {}",
                    self.pos
                );
            }
            let at = self.pos;
            let Some((tag, vr, len)) = self.header()? else {
                if at < self.len {
                    bail!("the file ends inside an element header at offset {at}");
                }
                return Ok(outline);
            };
            outline.pixel_data |= tag == PIXEL_DATA && frames.is_empty();
            match frames.last().copied() {
                Some(Frame::Sequence(_)) => self.in_sequence(&mut frames, tag, len, at)?,
                Some(Frame::Fragments) => self.in_fragments(&mut frames, tag, len, at)?,
                _ => self.in_data_set(&mut frames, tag, vr, len, at)?,
            }
        }
    }

    /// Inside a sequence: items, and the sequence's delimiter.
    fn in_sequence(&mut self, frames: &mut Vec<Frame>, tag: Tag, len: u32, at: u64) -> Result<()> {
        match tag {
            ITEM if len == UNDEFINED => frames.push(Frame::Item(None)),
            ITEM => {
                self.check(tag, len)?;
                frames.push(Frame::Item(Some(self.pos + len as u64)));
            }
            SEQUENCE_END => drop(frames.pop()),
            _ => bail!("{tag} at offset {at} where a sequence item belongs"),
        }
        Ok(())
    }

    /// Inside encapsulated pixel data: fragments of defined length, and the delimiter.
    fn in_fragments(&mut self, frames: &mut Vec<Frame>, tag: Tag, len: u32, at: u64) -> Result<()> {
        match tag {
            ITEM if len != UNDEFINED => self.skip(tag, len),
            SEQUENCE_END => {
                frames.pop();
                Ok(())
            }
            _ => {
                bail!("{tag} (length {len:#x}) at offset {at} where a pixel data fragment belongs")
            }
        }
    }

    /// At the top level or inside an item: elements, sequences, and an item's delimiter.
    fn in_data_set(
        &mut self,
        frames: &mut Vec<Frame>,
        tag: Tag,
        vr: VR,
        len: u32,
        at: u64,
    ) -> Result<()> {
        match tag {
            ITEM_END => match frames.last() {
                Some(Frame::Item(_)) => drop(frames.pop()),
                _ => bail!("an item delimiter at offset {at} outside any item"),
            },
            ITEM | SEQUENCE_END => bail!("{tag} at offset {at} outside any sequence"),
            // dicom-rs tests for a sequence before it tests for pixel data.
            _ if vr == VR::SQ && len == UNDEFINED => frames.push(Frame::Sequence(None)),
            _ if vr == VR::SQ => {
                self.check(tag, len)?;
                frames.push(Frame::Sequence(Some(self.pos + len as u64)));
            }
            PIXEL_DATA if len == UNDEFINED => frames.push(Frame::Fragments),
            _ if len == UNDEFINED => frames.push(Frame::Sequence(None)),
            _ => {
                // dicom-rs reads whole numbers of a binary VR's values but counts the full
                // length, so a remainder would shift every header after it.
                let size = value_size(vr);
                if !len.is_multiple_of(size) {
                    bail!("element {tag} ({vr:?}) at offset {at} has length {len}, not a multiple of {size}");
                }
                self.skip(tag, len)?
            }
        }
        Ok(())
    }
}

/// The bytes of one value of a binary VR (1 for text and bytes).
fn value_size(vr: VR) -> u32 {
    use VR::*;
    match vr {
        US | SS | OW => 2,
        AT | UL | SL | FL | OF | OL => 4,
        FD | OD | SV | UV | OV => 8,
        _ => 1,
    }
}

/// The VRs whose explicit length is 16 bits (PS3.5 7.1.2).
fn short_length(vr: VR) -> bool {
    use VR::*;
    matches!(
        vr,
        AE | AS
            | AT
            | CS
            | DA
            | DS
            | DT
            | FL
            | FD
            | IS
            | LO
            | LT
            | PN
            | SH
            | SL
            | SS
            | ST
            | TM
            | UI
            | UL
            | US
    )
}
