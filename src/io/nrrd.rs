//! NRRD volumes (NRRD0001 to NRRD0005): `.nrrd` files with the header attached and `.nhdr`
//! headers naming a data file beside them. Samples of 8 to 64 bits, raw, gzip or ascii,
//! are read as f32; float32 values or uint8 labels are written, gzip or raw. The file's
//! world space (usually left-posterior-superior) is converted to and from the RAS affine of
//! `Volume`.

// No panic on user data (RELIABILITY.md): an index or unwrap here is either an error or
// carries its proof in an `expect(..., reason)`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use super::{DecodeLimits, Volume};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The header and the blank line that ends it must lie within this many bytes.
const MAX_HEADER: usize = 1 << 20;

/// What `write` and `write_with` store: float32 image values, or uint8 labels on the same
/// grid. Either holds one value per voxel, x fastest like `Volume::data`.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    Float(&'a [f32]),
    Labels(&'a [u8]),
}

/// How `write_with` stores the samples after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Gzip,
}

/// Reads a NRRD volume: an attached header (`.nrrd`), or a detached one (`.nhdr`) whose
/// `data file` is taken relative to the header's folder. Sizes are checked against
/// `DecodeLimits::from_env()` before the data is read.
pub fn read(path: &Path) -> Result<Volume> {
    use std::io::Read;
    let name = path.display().to_string();
    let limits = DecodeLimits::from_env();
    let mut file = std::fs::File::open(path).with_context(|| format!("{name}: cannot open"))?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_HEADER as u64)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{name}: cannot read"))?;
    let header = parse_header(&bytes, &name)?;
    let layout = Layout::new(&header, &name, &limits)?;
    let Some(data_file) = &layout.data_file else {
        file.read_to_end(&mut bytes)
            .with_context(|| format!("{name}: cannot read"))?;
        let data = bytes.get(header.data_start..).unwrap_or_default();
        return layout.volume(data, &name, &limits);
    };
    let data_path = path.parent().unwrap_or(Path::new("")).join(data_file);
    let data_name = data_path.display().to_string();
    let data = std::fs::read(&data_path)
        .with_context(|| format!("{data_name}: cannot read the data file that {name} names"))?;
    layout.volume(&data, &data_name, &limits)
}

/// `read` for an attached-header NRRD file held in memory, named `name` in errors. Sizes
/// are checked against `limits` before any voxel buffer is allocated.
pub fn read_bytes(bytes: &[u8], name: &str, limits: &DecodeLimits) -> Result<Volume> {
    let header = parse_header(bytes, name)?;
    let layout = Layout::new(&header, name, limits)?;
    if let Some(file) = &layout.data_file {
        bail!("{name}: a detached header (`data file: {file}`); only a NRRD file with its data attached can be read from memory");
    }
    let data = bytes.get(header.data_start..).unwrap_or_default();
    layout.volume(data, name, limits)
}

/// True when `bytes` start with a NRRD magic.
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.starts_with(b"NRRD000")
}

/// Writes `values` on the grid of `volume` (its dims and affine) as a gzip-encoded NRRD
/// file with the header attached, through a temporary file and a rename.
pub fn write(path: &Path, volume: &Volume, values: Values) -> Result<()> {
    write_with(path, volume, values, Encoding::Gzip)
}

/// `write` with the encoding chosen.
pub fn write_with(path: &Path, volume: &Volume, values: Values, encoding: Encoding) -> Result<()> {
    let name = path.display().to_string();
    if name.to_ascii_lowercase().ends_with(".nhdr") {
        bail!("{name}: NRRD files are written with their header attached; name it .nrrd");
    }
    let bytes = encode(volume, values, encoding).with_context(|| format!("cannot write {name}"))?;
    super::atomic::write_atomically(path, &bytes)
}

// ---------------------------------------------------------------------------------------
// Header

/// The fields of a header, keyed by their name in lower case without spaces (the spec lets
/// `data file` be written `datafile`), and where the data starts after it.
struct Header {
    fields: BTreeMap<String, String>,
    data_start: usize,
}

impl Header {
    fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(&field_key(field)).map(String::as_str)
    }

    fn required(&self, field: &str, name: &str) -> Result<&str> {
        self.get(field)
            .with_context(|| format!("{name}: field `{field}` is missing"))
    }
}

/// At most 80 characters of `text`, for messages.
fn short(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}...", text.get(..end).unwrap_or_default()),
        None => text.to_string(),
    }
}

fn field_key(field: &str) -> String {
    field.replace(' ', "").to_ascii_lowercase()
}

/// The header's lines up to the first blank one (or to the end, for a detached header
/// without one); comments and `key:=value` pairs are skipped.
fn parse_header(bytes: &[u8], name: &str) -> Result<Header> {
    if !looks_like(bytes) {
        bail!("{name}: not a NRRD file (it does not start with `NRRD000`)");
    }
    let mut fields = BTreeMap::new();
    let mut pos = 0;
    let mut number = 0;
    while pos < bytes.len() {
        let rest = bytes.get(pos..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == b'\n');
        let line_end = pos + end.unwrap_or(rest.len());
        if line_end >= MAX_HEADER {
            bail!("{name}: the header does not end within {MAX_HEADER} bytes (no blank line)");
        }
        let line = rest.get(..end.unwrap_or(rest.len())).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos = line_end + 1;
        number += 1;
        if number == 1 {
            check_magic(line, name)?;
        } else if line.is_empty() {
            break;
        } else {
            add_line(&String::from_utf8_lossy(line), number, &mut fields, name)?;
        }
    }
    Ok(Header {
        fields,
        data_start: pos.min(bytes.len()),
    })
}

fn check_magic(line: &[u8], name: &str) -> Result<()> {
    match line.strip_prefix(b"NRRD000") {
        Some(b"1" | b"2" | b"3" | b"4" | b"5") => Ok(()),
        _ => bail!(
            "{name}: magic `{}`: expected NRRD0001 to NRRD0005",
            short(&String::from_utf8_lossy(line))
        ),
    }
}

fn add_line(
    line: &str,
    number: usize,
    fields: &mut BTreeMap<String, String>,
    name: &str,
) -> Result<()> {
    if line.starts_with('#') {
        return Ok(());
    }
    // `field: value` (the value may be empty) unless a `:=` comes first.
    let field = line
        .split_once(": ")
        .or_else(|| line.strip_suffix(':').map(|key| (key, "")));
    let pair = line.find(":=");
    match (field, pair) {
        (Some((key, _)), Some(p)) if p < key.len() => Ok(()),
        (None, Some(_)) => Ok(()),
        (Some((key, value)), _) => {
            let previous = fields.insert(field_key(key), value.trim().to_string());
            if previous.is_some() {
                bail!("{name}: field `{key}` appears twice in the header");
            }
            Ok(())
        }
        (None, None) => bail!(
            "{name}: header line {number} is neither `field: value`, `key:=value` nor a comment: `{}`",
            short(line)
        ),
    }
}

// ---------------------------------------------------------------------------------------
// What the header says about the data

#[derive(Debug, Clone, Copy)]
enum Sample {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl Sample {
    /// The spellings of `type` that the spec lists.
    fn parse(value: &str) -> Option<Self> {
        let words = value.split_whitespace().collect::<Vec<_>>().join(" ");
        Some(match words.to_ascii_lowercase().as_str() {
            "signed char" | "int8" | "int8_t" => Self::I8,
            "uchar" | "unsigned char" | "uint8" | "uint8_t" => Self::U8,
            "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
                Self::I16
            }
            "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => Self::U16,
            "int" | "signed int" | "int32" | "int32_t" => Self::I32,
            "uint" | "unsigned int" | "uint32" | "uint32_t" => Self::U32,
            "longlong"
            | "long long"
            | "long long int"
            | "signed long long"
            | "signed long long int"
            | "int64"
            | "int64_t" => Self::I64,
            "ulonglong"
            | "unsigned long long"
            | "unsigned long long int"
            | "uint64"
            | "uint64_t" => Self::U64,
            "float" => Self::F32,
            "double" => Self::F64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::I8 | Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }

    /// Samples in the file's byte order, as f32 (32- and 64-bit integers and doubles are
    /// rounded to the nearest f32).
    fn to_f32(self, bytes: &[u8], big: bool) -> Vec<f32> {
        macro_rules! words {
            ($t:ty) => {
                words(bytes, big, <$t>::from_le_bytes, <$t>::from_be_bytes, |v| {
                    v as f32
                })
            };
        }
        match self {
            Self::I8 => words!(i8),
            Self::U8 => words!(u8),
            Self::I16 => words!(i16),
            Self::U16 => words!(u16),
            Self::I32 => words!(i32),
            Self::U32 => words!(u32),
            Self::I64 => words!(i64),
            Self::U64 => words!(u64),
            Self::F32 => words!(f32),
            Self::F64 => words!(f64),
        }
    }
}

fn words<const N: usize, T>(
    bytes: &[u8],
    big: bool,
    little_endian: fn([u8; N]) -> T,
    big_endian: fn([u8; N]) -> T,
    to_f32: fn(T) -> f32,
) -> Vec<f32> {
    let from = if big { big_endian } else { little_endian };
    let (whole, _) = bytes.as_chunks::<N>();
    whole.iter().map(|&w| to_f32(from(w))).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Raw,
    Gzip,
    Ascii,
}

/// Where the samples start in the data: after `byte skip` bytes, or (-1, raw only) as the
/// last bytes of the file.
#[derive(Debug, Clone, Copy)]
enum Skip {
    Bytes(usize),
    AtEnd,
}

/// Everything needed to read the data and place the volume, checked against the limits.
struct Layout {
    dims: [usize; 3],
    count: usize,
    /// count times the sample size, which `new` checks does not overflow.
    data_bytes: usize,
    sample: Sample,
    big_endian: bool,
    stored: Stored,
    line_skip: usize,
    byte_skip: Skip,
    data_file: Option<String>,
    affine: [[f32; 4]; 4],
    spacing: [f32; 3],
}

impl Layout {
    fn new(h: &Header, name: &str, limits: &DecodeLimits) -> Result<Self> {
        let sample = sample_type(h, name)?;
        let (dims, spatial) = dims(h, name)?;
        limits
            .check_voxels(&dims)
            .with_context(|| name.to_string())?;
        let count = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let (count, data_bytes) = count
            .and_then(|n| Some((n, n.checked_mul(sample.size())?)))
            .with_context(|| format!("{name}: field `sizes`: {dims:?} voxels overflow"))?;
        let stored = stored(h, name)?;
        let big_endian = big_endian(h, name, sample, stored)?;
        let (line_skip, byte_skip) = skips(h, name, stored)?;
        let (affine, spacing) = geometry(h, name, &spatial)?;
        Ok(Self {
            dims,
            count,
            data_bytes,
            sample,
            big_endian,
            stored,
            line_skip,
            byte_skip,
            data_file: data_file(h, name)?,
            affine,
            spacing,
        })
    }

    /// The volume from the bytes after the header (attached) or of the data file.
    fn volume(&self, data: &[u8], name: &str, limits: &DecodeLimits) -> Result<Volume> {
        let data = skip_lines(data, self.line_skip, name)?;
        let bytes = self.data_bytes;
        let values = match self.stored {
            Stored::Raw => {
                let raw = samples(data, self.byte_skip, bytes, name, "the file")?;
                self.sample.to_f32(raw, self.big_endian)
            }
            Stored::Gzip => {
                let Skip::Bytes(skip) = self.byte_skip else {
                    bail!("{name}: field `byte skip`: -1 is only allowed with raw encoding");
                };
                let needed = skip
                    .checked_add(bytes)
                    .with_context(|| format!("{name}: field `byte skip`: {skip} overflows"))?;
                let plain = gunzip(data, name, needed, limits.max_decompressed_bytes)?;
                let raw = samples(&plain, self.byte_skip, bytes, name, "the gzip stream")?;
                self.sample.to_f32(raw, self.big_endian)
            }
            Stored::Ascii => {
                let skipped = match self.byte_skip {
                    Skip::Bytes(n) => data.get(n..).unwrap_or_default(),
                    Skip::AtEnd => data,
                };
                ascii(skipped, self.count, name)?
            }
        };
        Ok(Volume {
            dims: self.dims,
            data: values,
            spacing: self.spacing,
            affine: self.affine,
        })
    }
}

fn sample_type(h: &Header, name: &str) -> Result<Sample> {
    let value = h.required("type", name)?;
    Sample::parse(value).with_context(|| {
        format!("{name}: field `type`: `{value}` is not a type this reader takes (int8 to int64, uint8 to uint64, float, double)")
    })
}

/// (nx, ny, nz), and which axes of the file they are: a 2D file is one slice, and a 4D one
/// may have a first axis of size 1 that is not spatial.
fn dims(h: &Header, name: &str) -> Result<([usize; 3], Vec<usize>)> {
    let value = h.required("dimension", name)?;
    let dimension: usize = value
        .parse()
        .ok()
        .filter(|d| (2..=4).contains(d))
        .with_context(|| format!("{name}: field `dimension`: `{value}` (expected 2, 3 or 4)"))?;
    let sizes: Vec<usize> = numbers(h.required("sizes", name)?, "sizes", name)?;
    if sizes.len() != dimension {
        bail!(
            "{name}: field `sizes` has {} values, expected {dimension} (the dimension)",
            sizes.len()
        );
    }
    if sizes.contains(&0) {
        bail!("{name}: field `sizes`: {sizes:?} holds a 0");
    }
    match *sizes.as_slice() {
        [nx, ny] => Ok(([nx, ny, 1], vec![0, 1])),
        [nx, ny, nz] => Ok(([nx, ny, nz], vec![0, 1, 2])),
        [1, nx, ny, nz] if !first_axis_spatial(h) => Ok(([nx, ny, nz], vec![1, 2, 3])),
        _ => bail!(
            "{name}: field `sizes`: {sizes:?}: a 4D volume is read only when its first axis has size 1 and is not spatial (`none` in `space directions`)"
        ),
    }
}

fn first_axis_spatial(h: &Header) -> bool {
    h.get("space directions")
        .and_then(|v| v.split_whitespace().next())
        .is_some_and(|first| !first.eq_ignore_ascii_case("none"))
}

fn numbers<T: std::str::FromStr>(value: &str, field: &str, name: &str) -> Result<Vec<T>> {
    value
        .split_whitespace()
        .map(|t| {
            t.parse()
                .ok()
                .with_context(|| format!("{name}: field `{field}`: `{t}` is not a number"))
        })
        .collect()
}

fn stored(h: &Header, name: &str) -> Result<Stored> {
    let value = h.required("encoding", name)?.to_ascii_lowercase();
    Ok(match value.as_str() {
        "raw" => Stored::Raw,
        "gzip" | "gz" => Stored::Gzip,
        "ascii" | "text" | "txt" => Stored::Ascii,
        "bzip2" | "bz2" | "hex" | "zrl" => {
            bail!("{name}: field `encoding`: `{value}` is not supported (raw, gzip and ascii are)")
        }
        _ => bail!("{name}: field `encoding`: unknown encoding `{value}`"),
    })
}

fn big_endian(h: &Header, name: &str, sample: Sample, stored: Stored) -> Result<bool> {
    match h.get("endian").map(str::to_ascii_lowercase).as_deref() {
        Some("little") => Ok(false),
        Some("big") => Ok(true),
        Some(other) => bail!("{name}: field `endian`: `{other}` (expected little or big)"),
        None if sample.size() == 1 || stored == Stored::Ascii => Ok(false),
        None => {
            bail!("{name}: field `endian` is missing (needed for samples of more than one byte)")
        }
    }
}

fn skips(h: &Header, name: &str, stored: Stored) -> Result<(usize, Skip)> {
    let line_skip = match h.get("line skip") {
        None => 0,
        Some(v) => v
            .parse()
            .ok()
            .with_context(|| format!("{name}: field `line skip`: `{v}` is not a number >= 0"))?,
    };
    let byte_skip = match h.get("byte skip").map(str::parse::<i64>) {
        None => Skip::Bytes(0),
        Some(Ok(-1)) if stored == Stored::Raw => Skip::AtEnd,
        Some(Ok(-1)) => bail!("{name}: field `byte skip`: -1 is only allowed with raw encoding"),
        Some(Ok(n)) => Skip::Bytes(usize::try_from(n).ok().with_context(|| {
            format!("{name}: field `byte skip`: {n} (expected -1 or a number >= 0)")
        })?),
        Some(Err(_)) => bail!("{name}: field `byte skip` is not a number"),
    };
    Ok((line_skip, byte_skip))
}

/// The data file a detached header names; several files (`LIST`, or a `%d` pattern with
/// its range) are refused.
fn data_file(h: &Header, name: &str) -> Result<Option<String>> {
    let Some(value) = h.get("data file") else {
        return Ok(None);
    };
    let words: Vec<&str> = value.split_whitespace().collect();
    match words.as_slice() {
        [] => bail!("{name}: field `data file` is empty"),
        ["LIST", ..] => {
            bail!("{name}: field `data file`: LIST (data in several files) is not supported")
        }
        [pattern, range @ ..]
            if pattern.contains('%')
                && (3..=4).contains(&range.len())
                && range.iter().all(|w| w.parse::<i64>().is_ok()) =>
        {
            bail!("{name}: field `data file`: `{value}` names several files; only one data file is supported")
        }
        _ => Ok(Some(value.to_string())),
    }
}

// ---------------------------------------------------------------------------------------
// Geometry

/// Per world axis, the sign that turns the header's space into RAS; `None` when the header
/// names no space. A space dimension without a space name is taken as LPS, as ITK does.
fn to_ras(h: &Header, name: &str) -> Result<Option<[f64; 3]>> {
    let lps = [-1.0, -1.0, 1.0];
    if let Some(d) = h.get("space dimension") {
        if d.trim() != "3" {
            bail!("{name}: field `space dimension`: {d} (only 3 is supported)");
        }
    }
    let Some(space) = h.get("space") else {
        let directions = h.get("space dimension").or(h.get("space directions"));
        return Ok(directions.map(|_| lps));
    };
    Ok(Some(match space.to_ascii_lowercase().as_str() {
        "left-posterior-superior" | "lps" => lps,
        "left-anterior-superior" | "las" => [-1.0, 1.0, 1.0],
        "right-anterior-superior" | "ras" | "scanner-xyz" | "3d-right-handed" => [1.0, 1.0, 1.0],
        _ => bail!(
            "{name}: field `space`: `{space}` is not supported (left-posterior-superior, right-anterior-superior, left-anterior-superior, scanner-xyz or 3D-right-handed are)"
        ),
    }))
}

/// The RAS affine and the voxel sizes, from `space directions` and `space origin`, or else
/// from `spacings` (a diagonal affine at the origin).
fn geometry(h: &Header, name: &str, spatial: &[usize]) -> Result<([[f32; 4]; 4], [f32; 3])> {
    let flip = to_ras(h, name)?;
    let columns = match h.get("space directions") {
        Some(value) => directions(value, spatial, name)?,
        None => diagonal(h, spatial, name)?,
    };
    let origin = origin(h, name)?;
    let columns = match *columns.as_slice() {
        [a, b, c] => [a, b, c],
        [a, b] => [a, b, normal(a, b)],
        _ => bail!("{name}: {} spatial axes (expected 2 or 3)", columns.len()),
    };
    let affine = affine(columns, origin, flip.unwrap_or([1.0; 3]));
    if affine.iter().flatten().any(|v| !v.is_finite()) {
        bail!("{name}: the space directions or origin do not fit in 32-bit floats");
    }
    let spacing = columns.map(|c| norm(c) as f32);
    Ok((affine, spacing))
}

/// The direction of each spatial axis: a 3-vector each, `none` for the others.
fn directions(value: &str, spatial: &[usize], name: &str) -> Result<Vec<[f64; 3]>> {
    let field = "space directions";
    let all = vectors(value, field, name)?;
    let dimension = spatial.last().map_or(0, |last| last + 1);
    if all.len() != dimension {
        bail!(
            "{name}: field `{field}` has {} values, expected {dimension} (the dimension)",
            all.len()
        );
    }
    spatial
        .iter()
        .map(|&axis| match all.get(axis) {
            Some(Some(v)) => match vector3(v, field, name)? {
                d if norm(d) > 0.0 => Ok(d),
                _ => bail!("{name}: field `{field}`: axis {axis} has a zero vector"),
            },
            _ => bail!(
                "{name}: field `{field}`: axis {axis} is `none`; each spatial axis needs a vector"
            ),
        })
        .collect()
}

fn origin(h: &Header, name: &str) -> Result<[f64; 3]> {
    let field = "space origin";
    let Some(value) = h.get(field) else {
        return Ok([0.0; 3]);
    };
    match vectors(value, field, name)?.as_slice() {
        [Some(v)] => vector3(v, field, name),
        _ => bail!("{name}: field `{field}`: expected one vector `(x,y,z)`"),
    }
}

fn vector3(v: &[f64], field: &str, name: &str) -> Result<[f64; 3]> {
    match *v {
        [x, y, z] if v.iter().all(|c| c.is_finite()) => Ok([x, y, z]),
        [_, _, _] => bail!("{name}: field `{field}`: {v:?} is not finite"),
        _ => bail!(
            "{name}: field `{field}`: a vector of {} components, expected 3",
            v.len()
        ),
    }
}

/// The `(a,b,c)` vectors and `none`s of a field, in order.
fn vectors(value: &str, field: &str, name: &str) -> Result<Vec<Option<Vec<f64>>>> {
    let mut out = Vec::new();
    let mut rest = value.trim_start();
    while !rest.is_empty() {
        if rest
            .get(..4)
            .is_some_and(|w| w.eq_ignore_ascii_case("none"))
        {
            out.push(None);
            rest = rest.get(4..).unwrap_or_default().trim_start();
            continue;
        }
        let inner = rest.strip_prefix('(').and_then(|r| r.split_once(')'));
        let Some((inner, after)) = inner else {
            bail!(
                "{name}: field `{field}`: expected `(x,y,z)` or `none` at `{}`",
                short(rest)
            );
        };
        out.push(Some(numbers_in(inner, field, name)?));
        rest = after.trim_start();
    }
    Ok(out)
}

fn numbers_in(inner: &str, field: &str, name: &str) -> Result<Vec<f64>> {
    inner
        .split(',')
        .map(|t| {
            t.trim()
                .parse()
                .ok()
                .with_context(|| format!("{name}: field `{field}`: `{t}` is not a number"))
        })
        .collect()
}

/// Axis vectors from `spacings` (1 where it is missing, zero or not finite).
fn diagonal(h: &Header, spatial: &[usize], name: &str) -> Result<Vec<[f64; 3]>> {
    let spacings: Vec<f64> = match h.get("spacings") {
        Some(v) => numbers(v, "spacings", name)?,
        None => Vec::new(),
    };
    Ok(spatial
        .iter()
        .zip(0..)
        .map(|(&axis, world)| {
            let s = spacings
                .get(axis)
                .copied()
                .filter(|s| s.is_finite() && *s != 0.0)
                .unwrap_or(1.0);
            let mut v = [0.0; 3];
            if let Some(c) = v.get_mut(world) {
                *c = s;
            }
            v
        })
        .collect())
}

/// The unit normal of a 2D slice's plane, as its third axis.
fn normal(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    let [a0, a1, a2] = a;
    let [b0, b1, b2] = b;
    let n = [a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0];
    match norm(n) {
        l if l > 0.0 => n.map(|c| c / l),
        _ => [0.0, 0.0, 1.0],
    }
}

fn norm(v: [f64; 3]) -> f64 {
    v.iter().map(|c| c * c).sum::<f64>().sqrt()
}

/// Rows of voxel -> RAS world from the axis vectors (columns) and origin in the header's
/// space, each world row times its sign.
fn affine(columns: [[f64; 3]; 3], origin: [f64; 3], flip: [f64; 3]) -> [[f32; 4]; 4] {
    let [[a0, a1, a2], [b0, b1, b2], [c0, c1, c2]] = columns;
    let [o0, o1, o2] = origin;
    let [f0, f1, f2] = flip;
    let row = |f: f64, r: [f64; 4]| r.map(|v| (f * v) as f32);
    [
        row(f0, [a0, b0, c0, o0]),
        row(f1, [a1, b1, c1, o1]),
        row(f2, [a2, b2, c2, o2]),
        [0.0, 0.0, 0.0, 1.0],
    ]
}

// ---------------------------------------------------------------------------------------
// Data

fn skip_lines<'a>(data: &'a [u8], lines: usize, name: &str) -> Result<&'a [u8]> {
    let mut rest = data;
    for done in 0..lines {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            bail!("{name}: truncated: `line skip` is {lines}, the data holds {done} lines");
        };
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    Ok(rest)
}

/// The `promised` bytes of samples in `data` after the byte skip, or an error naming what
/// the file holds.
fn samples<'a>(
    data: &'a [u8],
    skip: Skip,
    promised: usize,
    name: &str,
    what: &str,
) -> Result<&'a [u8]> {
    let start = match skip {
        Skip::Bytes(n) => n,
        Skip::AtEnd => data.len().saturating_sub(promised),
    };
    let held = data.len().saturating_sub(start);
    if held < promised {
        bail!(
            "{name}: truncated: the header promises {promised} bytes of data, {what} holds {held}"
        );
    }
    if held > promised {
        tracing::warn!("{name}: {what} holds {held} bytes of data; the header promises {promised}, the rest is ignored");
    }
    data.get(start..start + promised).with_context(|| {
        format!(
            "{name}: truncated: the data ends before byte {}",
            start + promised
        )
    })
}

/// The first `needed` bytes of a gzip stream (fewer if it ends sooner). The rest of the
/// stream is decompressed without being kept, so that its length and CRC are checked, up to
/// `cap` bytes in all.
fn gunzip(data: &[u8], name: &str, needed: usize, cap: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let limit = || {
        format!("{name}: the gzip data expands beyond the limit of {cap} bytes (MSA_MAX_DECOMPRESSED_BYTES)")
    };
    if needed as u64 > cap {
        bail!("{}; the header promises {needed}", limit());
    }
    let mut decoder = flate2::read::GzDecoder::new(data);
    let mut out = Vec::with_capacity(needed);
    let kept = (&mut decoder).take(needed as u64).read_to_end(&mut out);
    let rest = kept.and_then(|_| {
        let left = cap - needed as u64;
        std::io::copy(&mut (&mut decoder).take(left + 1), &mut std::io::sink())
    });
    match rest {
        Err(e) => bail!(
            "{name}: truncated or corrupt gzip data ({e}): {} bytes decompressed, the header promises {needed}",
            out.len()
        ),
        Ok(extra) if needed as u64 + extra > cap => bail!("{}", limit()),
        Ok(extra) if extra > 0 => tracing::warn!("{name}: the gzip stream holds {extra} bytes more than the header promises; they are ignored"),
        Ok(_) => {}
    }
    Ok(out)
}

/// `count` numbers separated by white space (or commas).
fn ascii(text: &[u8], count: usize, name: &str) -> Result<Vec<f32>> {
    let text = std::str::from_utf8(text)
        .ok()
        .with_context(|| format!("{name}: the ascii data is not text"))?;
    let mut values = Vec::with_capacity(count);
    let words = text
        .split(|c: char| c.is_ascii_whitespace() || c == ',')
        .filter(|w| !w.is_empty());
    for word in words.take(count) {
        let v: f64 = word.parse().ok().with_context(|| {
            format!(
                "{name}: ascii value {} `{}` is not a number",
                values.len() + 1,
                short(word)
            )
        })?;
        values.push(v as f32);
    }
    if values.len() < count {
        bail!(
            "{name}: truncated: the header promises {count} values, the file holds {}",
            values.len()
        );
    }
    Ok(values)
}

// ---------------------------------------------------------------------------------------
// Writing

fn encode(volume: &Volume, values: Values, encoding: Encoding) -> Result<Vec<u8>> {
    let [nx, ny, nz] = volume.dims;
    let (type_name, samples): (&str, Vec<u8>) = match values {
        Values::Float(v) => ("float", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Values::Labels(v) => ("uint8", v.to_vec()),
    };
    let n = match values {
        Values::Float(v) => v.len(),
        Values::Labels(v) => v.len(),
    };
    if nx.checked_mul(ny).and_then(|p| p.checked_mul(nz)) != Some(n) || n == 0 {
        bail!("{n} values for a volume of {nx} x {ny} x {nz}");
    }
    if volume.affine.iter().flatten().any(|v| !v.is_finite()) {
        bail!("the affine {:?} is not finite", volume.affine);
    }
    let mut bytes = header_text(volume, type_name, encoding).into_bytes();
    match encoding {
        Encoding::Raw => bytes.extend_from_slice(&samples),
        Encoding::Gzip => {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(bytes, flate2::Compression::default());
            gz.write_all(&samples)?;
            bytes = gz.finish()?;
        }
    }
    Ok(bytes)
}

fn header_text(volume: &Volume, type_name: &str, encoding: Encoding) -> String {
    let [nx, ny, nz] = volume.dims;
    let [d0, d1, d2, origin] = lps_columns(&volume.affine).map(vector_text);
    let encoding = match encoding {
        Encoding::Raw => "raw",
        Encoding::Gzip => "gzip",
    };
    format!(
        "NRRD0004\n\
         # Complete NRRD file format specification at:\n\
         # http://teem.sourceforge.net/nrrd/format.html\n\
         type: {type_name}\n\
         dimension: 3\n\
         space: left-posterior-superior\n\
         sizes: {nx} {ny} {nz}\n\
         space directions: {d0} {d1} {d2}\n\
         kinds: domain domain domain\n\
         endian: little\n\
         encoding: {encoding}\n\
         space origin: {origin}\n\n"
    )
}

/// The three axis vectors and the origin of a RAS affine, in LPS (x and y negated).
fn lps_columns(affine: &[[f32; 4]; 4]) -> [[f32; 3]; 4] {
    let [x, y, z, _] = *affine;
    let mut columns = [[0.0; 3]; 4];
    for (c, ((x, y), z)) in columns.iter_mut().zip(x.into_iter().zip(y).zip(z)) {
        // + 0.0 turns -0 into 0.
        *c = [-x + 0.0, -y + 0.0, z + 0.0];
    }
    columns
}

/// `(x,y,z)`, each the shortest decimal that reads back as the same f32.
fn vector_text([x, y, z]: [f32; 3]) -> String {
    format!("({x},{y},{z})")
}
