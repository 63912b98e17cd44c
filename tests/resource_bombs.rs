//! Files that claim or expand to far more than they hold are refused with a clear error
//! before anything large is allocated, never by an out-of-memory kill or a stack overflow.

mod common;

use common::{nifti_claiming, png_claiming};
use std::io::Write;
use std::path::Path;
use std::process::Command;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A `.pth`-shaped zip: `data.pkl` and optionally one more entry, deflated.
fn pth_zip(path: &Path, pickle: &[u8], extra: Option<(&str, &[u8])>) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let deflate = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    z.start_file("archive/data.pkl", deflate).unwrap();
    z.write_all(pickle).unwrap();
    if let Some((name, data)) = extra {
        z.start_file(name, deflate).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

fn msa_fails(args: &[&std::ffi::OsStr]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_msa"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(1),
        "a clean error exit, not a crash: {text}"
    );
    text
}

#[test]
fn images_claiming_too_many_pixels_are_refused_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h, needle) in [(100_000, 100_000, "per side"), (16_000, 16_000, "pixels")] {
        let path = dir.path().join(format!("{w}x{h}.png"));
        std::fs::write(&path, png_claiming(w, h)).unwrap();
        let e = format!("{:#}", msa::io::image::load_rgb(&path).unwrap_err());
        assert!(e.contains(&format!("{w}x{h}")) && e.contains(needle), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}

/// Masks were read by `image::open`, outside msa's limits (only the image crate's default
/// 512 MiB allocation cap applied); now they go through the same checks as images.
#[test]
fn masks_claiming_too_many_pixels_are_refused_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    msa::data::synthetic::write_folder_dataset(dir.path(), 2, (32, 24), 1).unwrap();
    let mask = std::fs::read_dir(dir.path().join("masks"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    std::fs::write(&mask, png_claiming(100_000, 100_000)).unwrap();
    let items =
        msa::data::layout::discover(msa::data::layout::DatasetKind::Folder, dir.path(), 0, 0.0)
            .unwrap();
    let item = items
        .train
        .iter()
        .chain(&items.val)
        .chain(&items.test)
        .find(|i| i.masks.iter().flatten().any(|m| *m == mask))
        .unwrap();
    let e = format!("{:#}", msa::data::sample::load_item(item).unwrap_err());
    assert!(e.contains("100000x100000") && e.contains("per side"), "{e}");
    assert!(e.contains(&mask.display().to_string()), "{e}");
}

/// Found by fuzzing (`fuzz/corpus/image/crash-068d3016b7ea2891`): a progressive JPEG on
/// which zune-jpeg 0.5.15 fails an assertion in its AVX2 upsampler. The panic is contained
/// and reported as an error naming the file. (The input is also cut short: since msa checks
/// a JPEG's end marker, it is refused as truncated before the decoder runs.)
#[test]
fn a_jpeg_that_trips_the_decoder_is_an_error_not_a_panic() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/image/crash-068d3016b7ea2891");
    let e = format!("{:#}", msa::io::image::load_rgb(&path).unwrap_err());
    assert!(
        (e.contains("malformed") || e.contains("truncated JPEG"))
            && e.contains("crash-068d3016b7ea2891"),
        "{e}"
    );
}

#[test]
fn volumes_claiming_too_many_voxels_are_refused_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let header = nifti_claiming([10_000, 10_000, 10_000]);
    for (name, bytes) in [("bomb.nii", header.clone()), ("bomb.nii.gz", gzip(&header))] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = format!("{:#}", msa::io::nifti::read(&path).unwrap_err());
        assert!(
            e.contains("1000000000000 voxels") && e.contains("limit"),
            "{e}"
        );
    }
    // In memory, a gzip stream that expands beyond the limit stops at the limit.
    let limits = msa::io::DecodeLimits {
        max_decompressed_bytes: 1 << 20,
        ..Default::default()
    };
    let mut big = nifti_claiming([128, 128, 64]);
    big.resize(big.len() + 128 * 128 * 64 * 2, 0);
    let e = format!(
        "{:#}",
        msa::io::nifti::read_bytes(&gzip(&big), "upload", &limits).unwrap_err()
    );
    assert!(e.contains("expands beyond"), "{e}");
}

#[test]
fn a_deeply_nested_pickle_is_refused_not_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let n = 300_000;
    let mut pickle = vec![0x80, 2];
    pickle.extend(std::iter::repeat_n(b']', n));
    pickle.extend(std::iter::repeat_n(b'a', n - 1));
    pickle.push(b'.');
    let path = dir.path().join("deep.pth");
    pth_zip(&path, &pickle, None);
    let e = msa_fails(&["info".as_ref(), path.as_os_str()]);
    assert!(e.contains("nest more than 100 deep"), "{e}");
}

#[test]
fn a_zip_entry_that_expands_like_a_bomb_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.pth");
    let zeros = vec![0u8; 80 << 20];
    pth_zip(
        &path,
        &[0x80, 2, b'}', b'.'],
        Some(("archive/data/0", &zeros)),
    );
    let e = msa_fails(&["info".as_ref(), path.as_os_str()]);
    assert!(
        e.contains("decompression bomb") && e.contains("archive/data/0"),
        "{e}"
    );
}

#[test]
fn a_safetensors_header_claiming_a_gigabyte_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge_header.safetensors");
    let mut bytes = (1u64 << 30).to_le_bytes().to_vec();
    bytes.extend(b"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}");
    std::fs::write(&path, bytes).unwrap();
    let e = msa_fails(&["info".as_ref(), path.as_os_str()]);
    assert!(e.contains("huge_header.safetensors"), "{e}");
}

/// Found by fuzzing (the inputs are `fuzz/corpus/pth/crash-*`): a safetensors length prefix
/// near u64::MAX overflowed `length + 8` (a panic with overflow checks, a wrong
/// "safetensors" verdict without).
#[test]
fn a_length_prefix_near_the_largest_integer_is_not_a_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrap.safetensors");
    let mut bytes = (u64::MAX - 1).to_le_bytes().to_vec();
    bytes.extend([0xff; 24]);
    std::fs::write(&path, bytes).unwrap();
    let e = msa_fails(&["info".as_ref(), path.as_os_str()]);
    assert!(
        e.contains("neither a PyTorch zip checkpoint nor a safetensors file"),
        "{e}"
    );
}

/// Found by fuzzing (`fuzz/corpus/dicom/crash-*`): BitsStored outside 1..=32 made the
/// pixel decoder fail an assertion. dicom-rs 0.10 refuses both saved inputs in their meta
/// group already (a bad UID); a slice written here with BitsStored 40 still reaches the
/// check before decoding.
#[test]
fn a_dicom_slice_with_impossible_bits_stored_is_refused_before_decoding() {
    use dicom_dictionary_std::tags;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dicom");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("crash-") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(entry.path(), dir.path().join("slice.dcm")).unwrap();
        let e = format!("{:#}", msa::io::dicom::read_series(dir.path()).unwrap_err());
        assert!(
            e.contains("slice.dcm") && e.contains("Invalid UID"),
            "{name}: {e}"
        );
        seen += 1;
    }
    assert_eq!(seen, 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slice.dcm");
    msa::data::synthetic_dicom::write_slice(&path, "1.2.3", 0, 0.0, (3, 4)).unwrap();
    let mut obj = dicom_object::open_file(&path).unwrap();
    obj.put(dicom_core::DataElement::new(
        tags::BITS_STORED,
        dicom_core::VR::US,
        dicom_core::PrimitiveValue::from(40u16),
    ));
    obj.write_to_file(&path).unwrap();
    let e = format!("{:#}", msa::io::dicom::read_series(dir.path()).unwrap_err());
    assert!(
        e.contains("slice.dcm") && e.contains("BitsStored is 40"),
        "{e}"
    );
}

/// Found by fuzzing (`fuzz/corpus/nifti/crash-*`, 46 inputs, one bug): headers whose
/// `bitpix` disagrees with their datatype. The nifti crate reads `bitpix` bits per voxel and
/// decodes by the datatype, then panics on the mismatch; they are refused from the header.
#[test]
fn a_nifti_header_whose_bitpix_disagrees_with_its_datatype_is_refused() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/nifti");
    let mut bitpix = 0;
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("crash-") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        let limits = msa::io::DecodeLimits::default();
        let e = format!(
            "{:#}",
            msa::io::nifti::read_bytes(&bytes, &name, &limits).unwrap_err()
        );
        assert!(e.contains(&name), "{e}");
        bitpix += e.contains("bitpix") as usize;
    }
    assert!(bitpix > 0, "no crash input was refused for its bitpix");
}

/// Found by fuzzing (`fuzz/corpus/dicom_compressed/crash-*`, 29 inputs, one bug): a JPEG
/// frame whose own header is larger than the DICOM header's Rows x Columns made dicom-rs
/// 0.10.1 panic copying it (`range end index 753920 out of range for slice of length 256`,
/// adapters/jpeg.rs:81). The frame's size is checked against the header first, and a
/// decoder panic is contained.
#[test]
fn a_compressed_frame_larger_than_its_header_is_refused_not_a_panic() {
    let root =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dicom_compressed");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("crash-") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(entry.path(), dir.path().join("slice.dcm")).unwrap();
        let read = std::panic::catch_unwind(|| msa::io::dicom::read_series(dir.path()));
        let e = format!("{:#}", read.expect("no panic").unwrap_err());
        assert!(e.contains("slice.dcm"), "{name}: {e}");
        seen += 1;
    }
    assert_eq!(seen, 29);
}
