//! The element walk that runs before dicom-rs (`io::dicom::guard`), on byte streams built
//! here: a claim past the end of the file is refused wherever dicom-rs would read it, in
//! sequences, items, pixel data read as a sequence, and after delimiters out of place.

use msa::io::dicom::guard::check_bytes;

const LIMIT: u64 = 1 << 20;
const HUGE: u32 = 0xFFFF_FFF0;
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Preamble, magic and a meta group naming explicit VR little endian.
fn file() -> Vec<u8> {
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    let ts = b"1.2.840.10008.1.2.1\0";
    let mut group = vec![];
    group.extend(short(0x0002, 0x0010, b"UI", ts));
    out.extend(short(
        0x0002,
        0x0000,
        b"UL",
        &(group.len() as u32).to_le_bytes(),
    ));
    out.extend(group);
    out
}

fn tag(group: u16, element: u16) -> Vec<u8> {
    [group.to_le_bytes(), element.to_le_bytes()].concat()
}

/// An element with a 16-bit length.
fn short(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut out = tag(group, element);
    out.extend(vr);
    out.extend((value.len() as u16).to_le_bytes());
    out.extend(value);
    out
}

/// A header with a 32-bit length (OB, SQ, UN, ...), the value to follow.
fn long(group: u16, element: u16, vr: &[u8; 2], len: u32) -> Vec<u8> {
    let mut out = tag(group, element);
    out.extend(vr);
    out.extend([0, 0]);
    out.extend(len.to_le_bytes());
    out
}

/// An item, item delimiter or sequence delimiter header.
fn marker(element: u16, len: u32) -> Vec<u8> {
    let mut out = tag(0xFFFE, element);
    out.extend(len.to_le_bytes());
    out
}

fn refused(bytes: &[u8], what: &str) {
    let err = check_bytes(bytes, LIMIT).err().map(|e| format!("{e:#}"));
    assert!(err.is_some(), "{what}: passed");
}

#[test]
fn a_well_formed_file_passes_and_has_pixel_data() {
    let mut f = file();
    f.extend(short(0x0028, 0x0010, b"US", &2u16.to_le_bytes()));
    f.extend(long(0x0008, 0x1140, b"SQ", UNDEFINED));
    f.extend(marker(0xE000, UNDEFINED));
    f.extend(short(0x0008, 0x1155, b"UI", b"1.2.3\0"));
    f.extend(marker(0xE00D, 0));
    f.extend(marker(0xE0DD, 0));
    f.extend(long(0x7FE0, 0x0010, b"OB", UNDEFINED));
    f.extend(marker(0xE000, 0));
    f.extend(marker(0xE000, 4));
    f.extend([1, 2, 3, 4]);
    f.extend(marker(0xE0DD, 0));
    let outline = check_bytes(&f, LIMIT).unwrap();
    assert!(outline.pixel_data);
}

#[test]
fn a_claim_past_the_end_is_refused_at_the_top_level_and_in_items() {
    let mut f = file();
    f.extend(long(0x0009, 0x1020, b"OB", HUGE));
    refused(&f, "top level");
    let mut f = file();
    f.extend(long(0x0008, 0x1140, b"SQ", UNDEFINED));
    f.extend(marker(0xE000, UNDEFINED));
    f.extend(long(0x0009, 0x1020, b"OB", HUGE));
    refused(&f, "inside an item");
    let mut f = file();
    f.extend(long(0x7FE0, 0x0010, b"OB", UNDEFINED));
    f.extend(marker(0xE000, HUGE));
    refused(&f, "a pixel data fragment");
}

#[test]
fn delimiters_out_of_place_are_refused() {
    // A sequence delimiter at the top level (dicom-rs reads it as an element).
    let mut f = file();
    f.extend(long(0x7FE0, 0x0010, b"OB", 4));
    f.extend([0; 4]);
    f.extend(marker(0xE0DD, HUGE));
    refused(&f, "sequence delimiter at the top level");
    // An item delimiter inside a defined-length item, then an "item" hiding an element.
    let mut f = file();
    f.extend(long(0x0008, 0x1140, b"SQ", UNDEFINED));
    let mut inner = marker(0xE00D, 0);
    inner.extend(marker(0xE000, 12));
    inner.extend(long(0x0009, 0x1020, b"OB", HUGE));
    f.extend(marker(0xE000, inner.len() as u32));
    f.extend(inner);
    refused(&f, "item delimiter inside a defined-length item");
    // An item delimiter among pixel data fragments, then elements after it.
    let mut f = file();
    f.extend(long(0x7FE0, 0x0010, b"OB", UNDEFINED));
    f.extend(marker(0xE000, 0));
    f.extend(marker(0xE00D, 0));
    f.extend(marker(0xE0DD, 0));
    f.extend(long(0x0009, 0x1020, b"OB", HUGE));
    refused(&f, "item delimiter among fragments");
}

#[test]
fn pixel_data_declared_a_sequence_is_walked_as_one() {
    let mut f = file();
    f.extend(long(0x7FE0, 0x0010, b"SQ", UNDEFINED));
    f.extend(marker(0xE000, UNDEFINED));
    f.extend(long(0x0009, 0x1020, b"OB", HUGE));
    refused(&f, "an element inside pixel data read as a sequence");
}

#[test]
fn a_file_cut_inside_a_header_or_its_meta_group_is_refused() {
    let mut f = file();
    f.extend(short(0x0028, 0x0010, b"US", &2u16.to_le_bytes()));
    f.extend(&tag(0x0028, 0x0011)[..3]);
    refused(&f, "cut inside a header");
    let f = file();
    refused(&f[..f.len() - 6], "cut inside the meta group");
}

/// Found by fuzzing (`fuzz/hangs/dicom/round5-*`): a US element given VR UL and length 2.
/// dicom-rs reads whole u32 values (none) but counts 2 bytes, so every later header is read
/// 2 bytes early; one of them claimed 3.3 GB, which dicom-rs reserved. Lengths that are not
/// a whole number of a binary VR's values are refused.
#[test]
fn a_binary_value_of_a_broken_length_is_refused() {
    let mut f = file();
    f.extend(short(0x0028, 0x0101, b"UL", &[16, 0]));
    f.extend(short(0x0028, 0x0102, b"US", &15u16.to_le_bytes()));
    refused(&f, "UL of 2 bytes");
    let mut f = file();
    f.extend(short(0x0028, 0x0101, b"UL", &16u32.to_le_bytes()));
    check_bytes(&f, LIMIT).unwrap();
}
