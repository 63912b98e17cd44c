//! NRRD volumes (`msa::io::nrrd`): written and read back bit for bit, files written by hand
//! (big-endian, detached header, 2D, 4D), and broken or hostile files refused with the file
//! and the field named.

use msa::io::nrrd::{self, Encoding, Values};
use msa::io::{DecodeLimits, Volume};
use std::path::Path;

/// A 5 x 4 x 3 grid, rotated about two axes, with voxels of 0.7 x 1.3 x 2.5 mm.
fn oblique_volume() -> Volume {
    let (a, b) = (0.3f64, -0.45f64);
    let rz = [
        [a.cos(), -a.sin(), 0.0],
        [a.sin(), a.cos(), 0.0],
        [0.0, 0.0, 1.0],
    ];
    let rx = [
        [1.0, 0.0, 0.0],
        [0.0, b.cos(), -b.sin()],
        [0.0, b.sin(), b.cos()],
    ];
    let spacing = [0.7f32, 1.3, 2.5];
    let origin = [-12.5f32, 30.25, 7.0];
    let mut affine = [[0.0f32; 4]; 4];
    for i in 0..3 {
        for j in 0..3 {
            let r: f64 = (0..3).map(|k| rz[i][k] * rx[k][j]).sum();
            affine[i][j] = r as f32 * spacing[j];
        }
        affine[i][3] = origin[i];
    }
    affine[3][3] = 1.0;
    let dims = [5, 4, 3];
    let mut data: Vec<f32> = (0..60).map(|i| (i as f32 - 20.0) * 0.37).collect();
    data[0] = f32::from_bits(0x7fc0_1234); // a NaN with a payload
    data[1] = -0.0;
    data[2] = f32::from_bits(1); // the smallest subnormal
    data[3] = f32::INFINITY;
    data[4] = -3.4e38;
    Volume {
        dims,
        data,
        spacing,
        affine,
    }
}

fn assert_geometry(got: &Volume, want: &Volume) {
    assert_eq!(got.dims, want.dims);
    for (g, w) in got
        .affine
        .iter()
        .flatten()
        .zip(want.affine.iter().flatten())
    {
        assert!(
            (g - w).abs() < 1e-5,
            "affine {:?} != {:?}",
            got.affine,
            want.affine
        );
    }
    for (g, w) in got.spacing.iter().zip(want.spacing) {
        assert!(
            (g - w).abs() < 1e-5,
            "spacing {:?} != {:?}",
            got.spacing,
            want.spacing
        );
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// The text up to the blank line that ends a header.
fn header_of(bytes: &[u8]) -> String {
    let end = bytes.windows(2).position(|w| w == b"\n\n").unwrap();
    String::from_utf8_lossy(&bytes[..end + 1]).to_string()
}

fn error_of(result: anyhow::Result<Volume>) -> String {
    format!("{:#}", result.expect_err("the file should be refused"))
}

#[test]
fn float_values_and_labels_round_trip_bit_for_bit_raw_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let volume = oblique_volume();
    let labels: Vec<u8> = (0..60).map(|i| (i * 37 % 256) as u8).collect();
    for encoding in [Encoding::Raw, Encoding::Gzip] {
        let path = dir.path().join(format!("image-{encoding:?}.nrrd"));
        nrrd::write_with(&path, &volume, Values::Float(&volume.data), encoding).unwrap();
        let back = nrrd::read(&path).unwrap();
        assert_eq!(bits(&back.data), bits(&volume.data), "{encoding:?}");
        assert_geometry(&back, &volume);

        let path = dir.path().join(format!("labels-{encoding:?}.nrrd"));
        nrrd::write_with(&path, &volume, Values::Labels(&labels), encoding).unwrap();
        let back = nrrd::read(&path).unwrap();
        let want: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        assert_eq!(bits(&back.data), bits(&want), "{encoding:?}");
        assert_geometry(&back, &volume);
        let header = header_of(&std::fs::read(&path).unwrap());
        assert!(header.starts_with("NRRD0004\n"));
        assert!(header.contains("type: uint8\n"), "{header}");
        assert!(
            header.contains("space: left-posterior-superior\n"),
            "{header}"
        );
    }
    // `write` is gzip, read from memory the same as from the file.
    let path = dir.path().join("default.nrrd");
    nrrd::write(&path, &volume, Values::Float(&volume.data)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(header_of(&bytes).contains("encoding: gzip\n"));
    let from_memory = nrrd::read_bytes(&bytes, "default.nrrd", &DecodeLimits::default()).unwrap();
    assert_eq!(bits(&from_memory.data), bits(&volume.data));
    assert_geometry(&from_memory, &volume);
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}

#[test]
fn the_written_header_is_in_lps() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = oblique_volume();
    volume.affine = [
        [-0.5, 0.0, 0.0, 10.0],
        [0.0, 0.75, 0.0, -20.0],
        [0.0, 0.0, 2.0, 30.5],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let path = dir.path().join("lps.nrrd");
    nrrd::write_with(&path, &volume, Values::Float(&volume.data), Encoding::Raw).unwrap();
    let text = header_of(&std::fs::read(&path).unwrap());
    assert!(
        text.contains("space directions: (0.5,0,0) (0,-0.75,0) (0,0,2)\n"),
        "{text}"
    );
    assert!(text.contains("space origin: (-10,20,30.5)\n"), "{text}");
    assert!(text.contains("kinds: domain domain domain\n"), "{text}");
}

#[test]
fn a_big_endian_int16_file_written_by_hand_reads_in_ras() {
    let header = "NRRD0005\n\
        # written by hand\n\
        type: short\n\
        dimension: 3\n\
        space: LPS\n\
        sizes: 3 2 2\n\
        space directions: (0.5, 0, 0) (0,0.75,0) (0,0,2)\n\
        endian: big\n\
        encoding: raw\n\
        space origin: (10,20,30)\n\
        comment:=this is ignored\n\n";
    let values: [i16; 12] = [-32768, -1, 0, 1, 300, 32767, 7, -7, 1000, -1000, 2, 3];
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend(values.iter().flat_map(|v| v.to_be_bytes()));
    let v = nrrd::read_bytes(&bytes, "be.nrrd", &DecodeLimits::default()).unwrap();
    assert_eq!(v.dims, [3, 2, 2]);
    assert_eq!(v.data, values.map(f32::from).to_vec());
    assert_eq!(v.spacing, [0.5, 0.75, 2.0]);
    assert_eq!(
        v.affine,
        [
            [-0.5, 0.0, 0.0, -10.0],
            [0.0, -0.75, 0.0, -20.0],
            [0.0, 0.0, 2.0, 30.0],
            [0.0, 0.0, 0.0, 1.0]
        ]
    );
    // The same header with Windows line ends.
    let mut crlf = header.replace('\n', "\r\n").into_bytes();
    crlf.extend(values.iter().flat_map(|v| v.to_be_bytes()));
    let w = nrrd::read_bytes(&crlf, "crlf.nrrd", &DecodeLimits::default()).unwrap();
    assert_eq!((w.data, w.affine), (v.data, v.affine));
}

#[test]
fn a_detached_header_reads_its_data_file_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let header = "NRRD0004\n\
        type: unsigned short\n\
        dimension: 3\n\
        sizes: 2 2 2\n\
        spacings: 1.5 2 3\n\
        endian: little\n\
        encoding: raw\n\
        byte skip: 4\n\
        data file: v.raw\n";
    std::fs::write(dir.path().join("v.nhdr"), header).unwrap();
    let values: [u16; 8] = [0, 1, 2, 65535, 40000, 5, 6, 7];
    let mut raw = b"junk".to_vec();
    raw.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.path().join("v.raw"), &raw).unwrap();
    let v = nrrd::read(&dir.path().join("v.nhdr")).unwrap();
    assert_eq!(v.dims, [2, 2, 2]);
    assert_eq!(v.data, values.map(f32::from).to_vec());
    assert_eq!(v.spacing, [1.5, 2.0, 3.0]);
    assert_eq!(v.affine[0], [1.5, 0.0, 0.0, 0.0]);
    assert_eq!(v.affine[2], [0.0, 0.0, 3.0, 0.0]);

    // Gzipped, after a line to skip; and a data file cut short names itself.
    let header = "NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: gz\nline skip: 1\ndatafile: ./w.raw.gz\n\n";
    std::fs::write(dir.path().join("w.nhdr"), header).unwrap();
    let mut data = b"skipped line\n".to_vec();
    data.extend(gzip(&[9, 8, 7, 6, 5, 4, 3, 2]));
    std::fs::write(dir.path().join("w.raw.gz"), &data).unwrap();
    let w = nrrd::read(&dir.path().join("w.nhdr")).unwrap();
    assert_eq!(w.data, vec![9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]);
    std::fs::write(dir.path().join("v.raw"), &raw[..10]).unwrap();
    let err = error_of(nrrd::read(&dir.path().join("v.nhdr")));
    assert!(err.contains("truncated") && err.contains("v.raw"), "{err}");
    assert!(
        err.contains("promises 16 bytes") && err.contains("holds 6"),
        "{err}"
    );
}

#[test]
fn two_d_ascii_and_single_frame_four_d_files_read_as_volumes() {
    let text = "NRRD0004\ntype: uint8\ndimension: 2\nspace: right-anterior-superior\nsizes: 3 2\nspace directions: (2,0,0) (0,3,0)\nencoding: ascii\n\n1 2 3\n4 5 255\n";
    let v = nrrd::read_bytes(text.as_bytes(), "flat.nrrd", &DecodeLimits::default()).unwrap();
    assert_eq!(v.dims, [3, 2, 1]);
    assert_eq!(v.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 255.0]);
    assert_eq!(v.spacing, [2.0, 3.0, 1.0]);
    assert_eq!(v.affine[2], [0.0, 0.0, 1.0, 0.0]);

    let mut four = b"NRRD0004\ntype: float\ndimension: 4\nspace: left-anterior-superior\nsizes: 1 2 1 1\nspace directions: none (1,0,0) (0,1,0) (0,0,1)\nkinds: scalar domain domain domain\nendian: little\nencoding: raw\n\n".to_vec();
    four.extend([1.5f32, -2.5].iter().flat_map(|v| v.to_le_bytes()));
    let v = nrrd::read_bytes(&four, "four.nrrd", &DecodeLimits::default()).unwrap();
    assert_eq!(v.dims, [2, 1, 1]);
    assert_eq!(v.data, vec![1.5, -2.5]);
    assert_eq!(v.affine[0], [-1.0, 0.0, 0.0, 0.0]);
    assert_eq!(v.affine[1], [0.0, 1.0, 0.0, 0.0]);

    let two_frames = String::from_utf8_lossy(&four).replace("sizes: 1 2 1 1", "sizes: 2 1 1 1");
    let err = error_of(nrrd::read_bytes(
        two_frames.as_bytes(),
        "four.nrrd",
        &DecodeLimits::default(),
    ));
    assert!(
        err.contains("four.nrrd") && err.contains("`sizes`"),
        "{err}"
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn written(dir: &Path, name: &str, encoding: Encoding) -> (std::path::PathBuf, Vec<u8>) {
    let volume = oblique_volume();
    let path = dir.join(name);
    nrrd::write_with(&path, &volume, Values::Float(&volume.data), encoding).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn truncated_raw_and_gzip_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, whole) = written(dir.path(), "cut.nrrd", Encoding::Raw);
    std::fs::write(&path, &whole[..whole.len() - 5]).unwrap();
    let err = error_of(nrrd::read(&path));
    assert!(
        err.contains("truncated") && err.contains("cut.nrrd"),
        "{err}"
    );
    assert!(
        err.contains("promises 240 bytes") && err.contains("holds 235"),
        "{err}"
    );

    let (path, whole) = written(dir.path(), "cut-gz.nrrd", Encoding::Gzip);
    let header_end = whole.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    for keep in [
        header_end,
        header_end + 5,
        (header_end + whole.len()) / 2,
        whole.len() - 4,
        whole.len() - 1,
    ] {
        std::fs::write(&path, &whole[..keep]).unwrap();
        let err = error_of(nrrd::read(&path));
        assert!(
            err.contains("truncated") && err.contains("cut-gz.nrrd"),
            "keep {keep}: {err}"
        );
    }
    // A wrong CRC in the trailer.
    let mut bent = whole.clone();
    let at = whole.len() - 6;
    bent[at] ^= 0x55;
    std::fs::write(&path, &bent).unwrap();
    let err = error_of(nrrd::read(&path));
    assert!(
        err.contains("corrupt") && err.contains("cut-gz.nrrd"),
        "{err}"
    );

    // A whole gzip stream that holds fewer bytes than the sizes promise.
    let mut short =
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nendian: little\nencoding: gzip\n\n"
            .to_vec();
    short.extend(gzip(&[0u8; 10]));
    let err = error_of(nrrd::read_bytes(
        &short,
        "short.nrrd",
        &DecodeLimits::default(),
    ));
    assert!(
        err.contains("truncated") && err.contains("short.nrrd"),
        "{err}"
    );
    assert!(
        err.contains("promises 256 bytes") && err.contains("holds 10"),
        "{err}"
    );

    // A header cut before its blank line holds no data at all.
    let err = error_of(nrrd::read_bytes(
        &whole[..header_end - 30],
        "head.nrrd",
        &DecodeLimits::default(),
    ));
    assert!(err.contains("head.nrrd"), "{err}");
}

#[test]
fn a_header_claiming_a_trillion_voxels_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    for encoding in ["raw", "gzip"] {
        let text = format!("NRRD0004\ntype: float\ndimension: 3\nsizes: 10000 10000 10000\nendian: little\nencoding: {encoding}\n\n1234");
        let err = error_of(nrrd::read_bytes(
            text.as_bytes(),
            "bomb.nrrd",
            &DecodeLimits::default(),
        ));
        assert!(
            err.contains("bomb.nrrd") && err.contains("MSA_MAX_VOXELS"),
            "{err}"
        );
        let path = dir.path().join("bomb.nrrd");
        std::fs::write(&path, &text).unwrap();
        let err = error_of(nrrd::read(&path));
        assert!(
            err.contains("bomb.nrrd") && err.contains("MSA_MAX_VOXELS"),
            "{err}"
        );
    }
    // Sizes whose product or byte count overflows, under a limit that would let them pass.
    let unlimited = DecodeLimits {
        max_voxels: u64::MAX,
        ..DecodeLimits::default()
    };
    for sizes in ["18446744073709551615 2 2", "4611686018427387904 1 1"] {
        let text = format!("NRRD0004\ntype: double\ndimension: 3\nsizes: {sizes}\nendian: little\nencoding: raw\n\n");
        let err = error_of(nrrd::read_bytes(text.as_bytes(), "huge.nrrd", &unlimited));
        assert!(
            err.contains("huge.nrrd") && err.contains("overflow"),
            "{err}"
        );
    }
    // The gzip limit: a stream that expands past it stops there.
    let tight = DecodeLimits {
        max_decompressed_bytes: 100,
        ..DecodeLimits::default()
    };
    let mut big =
        b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 10 10 10\nencoding: gzip\n\n".to_vec();
    big.extend(gzip(&[0u8; 1000]));
    let err = error_of(nrrd::read_bytes(&big, "zip.nrrd", &tight));
    assert!(err.contains("MSA_MAX_DECOMPRESSED_BYTES"), "{err}");
    // A header promising 10 bytes before a stream of 10000: the rest is decompressed (and
    // checked) only up to the limit, never kept.
    let mut long =
        b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 10 1 1\nencoding: gzip\n\n".to_vec();
    long.extend(gzip(&[3u8; 10000]));
    let err = error_of(nrrd::read_bytes(&long, "long.nrrd", &tight));
    assert!(
        err.contains("long.nrrd") && err.contains("MSA_MAX_DECOMPRESSED_BYTES"),
        "{err}"
    );
    let v = nrrd::read_bytes(&long, "long.nrrd", &DecodeLimits::default()).unwrap();
    assert_eq!(v.data, vec![3.0; 10]);
}

#[test]
fn header_errors_name_the_file_and_the_field() {
    let limits = DecodeLimits::default();
    let base = "NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 2\nendian: little\nencoding: raw\n";
    let cases: [(&str, &str, &str); 12] = [
        ("sizes: 2 2 2\n", "", "field `sizes` is missing"),
        (
            "sizes: 2 2 2",
            "sizes: 2 2",
            "field `sizes` has 2 values, expected 3",
        ),
        ("type: float", "type: complex", "field `type`"),
        (
            "encoding: raw",
            "encoding: bzip2",
            "field `encoding`: `bzip2` is not supported",
        ),
        ("endian: little\n", "", "field `endian` is missing"),
        (
            "encoding: raw\n",
            "encoding: raw\ndata file: LIST\n",
            "field `data file`: LIST",
        ),
        (
            "encoding: raw\n",
            "encoding: raw\ndata file: slice%03d.raw 1 10 1\n",
            "names several files",
        ),
        (
            "encoding: raw",
            "encoding: gzip\nbyte skip: -1",
            "field `byte skip`",
        ),
        (
            "encoding: raw\n",
            "encoding: raw\nspace: right-up\n",
            "field `space`",
        ),
        (
            "encoding: raw\n",
            "encoding: raw\nspace: LPS\nspace directions: (1,0,0) (0,1,0)\n",
            "field `space directions` has 2 values",
        ),
        (
            "encoding: raw\n",
            "encoding: raw\nspace: LPS\nspace directions: (1,0,0) (0,1) (0,0,1)\n",
            "field `space directions`: a vector of 2",
        ),
        ("dimension: 3", "dimension: 7", "field `dimension`"),
    ];
    for (from, to, want) in cases {
        let text = format!("{}\n{}", base.replace(from, to), "x".repeat(32));
        let err = error_of(nrrd::read_bytes(text.as_bytes(), "v.nrrd", &limits));
        assert!(
            err.contains("v.nrrd") && err.contains(want),
            "{from:?} -> {to:?}: {err}"
        );
    }
    let detached = format!("{base}data file: v.raw\n\n");
    let err = error_of(nrrd::read_bytes(detached.as_bytes(), "v.nhdr", &limits));
    assert!(err.contains("detached"), "{err}");
    let long = format!("{base}# {}\n\n", "x".repeat(1 << 21));
    let err = error_of(nrrd::read_bytes(long.as_bytes(), "long.nrrd", &limits));
    assert!(err.contains("long.nrrd") && err.contains("header"), "{err}");
    let err = error_of(nrrd::read_bytes(b"P5\n3 2\n255\n", "pgm.nrrd", &limits));
    assert!(err.contains("not a NRRD file"), "{err}");
}

#[test]
fn writing_refuses_values_that_do_not_fill_the_grid() {
    let dir = tempfile::tempdir().unwrap();
    let volume = oblique_volume();
    let path = dir.path().join("short.nrrd");
    let err = nrrd::write(&path, &volume, Values::Labels(&[1, 2, 3])).unwrap_err();
    assert!(format!("{err:#}").contains("3 values"), "{err:#}");
    assert!(!path.exists());
}

/// Every prefix of a file, and every byte of its header changed, is an error or a volume:
/// never a panic.
#[test]
fn damaged_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let limits = DecodeLimits {
        max_voxels: 1 << 16,
        max_decompressed_bytes: 1 << 20,
        ..DecodeLimits::default()
    };
    for encoding in [Encoding::Raw, Encoding::Gzip] {
        let (_, whole) = written(dir.path(), "whole.nrrd", encoding);
        for keep in 0..whole.len() {
            let _ = nrrd::read_bytes(&whole[..keep], "cut.nrrd", &limits);
        }
        let header_end = whole.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
        for at in 0..header_end + 16 {
            for byte in [b'\n', b' ', b'(', b')', b',', b'-', b'9', b':', 0xff] {
                let mut bent = whole.clone();
                bent[at] = byte;
                let _ = nrrd::read_bytes(&bent, "bent.nrrd", &limits);
            }
        }
    }
}

fn sample_bytes(canonical: &str, v: f64, big: bool) -> Vec<u8> {
    macro_rules! bytes {
        ($t:ty) => {
            if big {
                (v as $t).to_be_bytes().to_vec()
            } else {
                (v as $t).to_le_bytes().to_vec()
            }
        };
    }
    match canonical {
        "int8" => bytes!(i8),
        "uint8" => bytes!(u8),
        "int16" => bytes!(i16),
        "uint16" => bytes!(u16),
        "int32" => bytes!(i32),
        "uint32" => bytes!(u32),
        "int64" => bytes!(i64),
        "uint64" => bytes!(u64),
        "float" => bytes!(f32),
        "double" => bytes!(f64),
        _ => unreachable!(),
    }
}

#[test]
fn every_type_spelling_reads_in_both_byte_orders() {
    let spellings: [(&str, &[&str]); 10] = [
        ("int8", &["signed char", "int8", "int8_t"]),
        ("uint8", &["uchar", "unsigned char", "uint8", "uint8_t"]),
        (
            "int16",
            &[
                "short",
                "short int",
                "signed short",
                "signed short int",
                "int16",
                "int16_t",
            ],
        ),
        (
            "uint16",
            &[
                "ushort",
                "unsigned short",
                "unsigned  short int",
                "uint16",
                "uint16_t",
            ],
        ),
        ("int32", &["int", "signed int", "int32", "int32_t"]),
        ("uint32", &["uint", "unsigned int", "uint32", "uint32_t"]),
        (
            "int64",
            &[
                "longlong",
                "long long",
                "long long int",
                "signed long long",
                "signed long long int",
                "int64",
                "int64_t",
            ],
        ),
        (
            "uint64",
            &[
                "ulonglong",
                "unsigned long long",
                "unsigned long long int",
                "uint64",
                "uint64_t",
            ],
        ),
        ("float", &["float", "FLOAT"]),
        ("double", &["double"]),
    ];
    let values = [0.0, 7.0, 100.0, 120.0];
    for (canonical, names) in spellings {
        for name in names {
            for big in [false, true] {
                let endian = if big { "big" } else { "little" };
                let mut file = format!("NRRD0004\ntype: {name}\ndimension: 3\nsizes: 2 2 1\nendian: {endian}\nencoding: raw\n\n").into_bytes();
                for v in values {
                    file.extend(sample_bytes(canonical, v, big));
                }
                let v = nrrd::read_bytes(&file, "t.nrrd", &DecodeLimits::default())
                    .unwrap_or_else(|e| panic!("{name} {endian}: {e:#}"));
                assert_eq!(v.data, values.map(|x| x as f32).to_vec(), "{name} {endian}");
            }
        }
    }
}
