//! NIfTI-1 volumes (`.nii`, `.nii.gz`) through the `nifti` crate: read with the file's
//! scaling, spacing and affine; label volumes written back on the input's grid.

use super::volume::Volume;
use anyhow::{bail, Context, Result};
use ndarray::ShapeBuilder;
use nifti::{IntoNdArray, NiftiHeader, NiftiObject, NiftiType, ReaderOptions};
use std::path::{Path, PathBuf};

/// The data types a volume may have; others are refused by name.
const READABLE: &[(NiftiType, &str)] = &[
    (NiftiType::Uint8, "uint8"),
    (NiftiType::Int8, "int8"),
    (NiftiType::Uint16, "uint16"),
    (NiftiType::Int16, "int16"),
    (NiftiType::Uint32, "uint32"),
    (NiftiType::Int32, "int32"),
    (NiftiType::Float32, "float32"),
    (NiftiType::Float64, "float64"),
];

/// A volume read from a NIfTI file, with its header (kept so that outputs share the
/// input's geometry and orientation).
#[derive(Debug, Clone)]
pub struct NiftiVolume {
    pub volume: Volume,
    pub header: NiftiHeader,
}

impl NiftiVolume {
    /// A volume from elsewhere (a DICOM series) with a header that places it in world
    /// space: the sform holds its affine, voxel sizes in mm.
    pub fn from_volume(volume: Volume) -> Self {
        let [nx, ny, nz] = volume.dims;
        let [sx, sy, sz] = volume.spacing;
        let mut header = NiftiHeader {
            sform_code: 1,
            qform_code: 0,
            srow_x: volume.affine[0],
            srow_y: volume.affine[1],
            srow_z: volume.affine[2],
            xyzt_units: 2,
            ..NiftiHeader::default()
        };
        let d = |v: usize| v.min(u16::MAX as usize) as u16;
        header.dim = [3, d(nx), d(ny), d(nz), 1, 1, 1, 1];
        header.pixdim = [1.0, sx, sy, sz, 0.0, 0.0, 0.0, 0.0];
        Self { volume, header }
    }
}

/// Reads a 3D NIfTI-1 volume (a 2D image is one slice; a 4D one must have one frame).
/// The header is read first and the size it claims checked against
/// `DecodeLimits::from_env()` before any voxel is read.
pub fn read(path: &Path) -> Result<NiftiVolume> {
    if is_gzip(path) {
        // Decompressed whole, so that the stream's length and CRC are checked: the nifti
        // crate stops reading where the voxels end, and took a file cut in its trailer.
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        return read_bytes(
            &bytes,
            &path.display().to_string(),
            &super::DecodeLimits::from_env(),
        );
    }
    let header = NiftiHeader::from_file(path).with_context(|| {
        format!(
            "{}: cannot read a NIfTI-1 header (missing, truncated, or not a .nii/.nii.gz file?)",
            path.display()
        )
    })?;
    let dims = checked_dims(path, &header)?;
    super::DecodeLimits::from_env()
        .check_voxels(&dims)
        .with_context(|| path.display().to_string())?;
    let obj = ReaderOptions::new().read_file(path).with_context(|| {
        format!(
            "{}: cannot read as NIfTI-1 (missing, truncated, or not a .nii/.nii.gz file?)",
            path.display()
        )
    })?;
    from_object(obj, path)
}

fn is_gzip(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b]
}

/// True when `bytes` start like a NIfTI-1 file or a gzip stream (which may hold one).
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b]) || bytes.get(344..348) == Some(b"n+1\0".as_slice())
}

/// `read` for a file held in memory (`.nii`, or gzipped `.nii.gz`), named `name` in
/// errors. Sizes are checked against `limits` from the header before the voxels are read.
pub fn read_bytes(bytes: &[u8], name: &str, limits: &super::DecodeLimits) -> Result<NiftiVolume> {
    let what = Path::new(name);
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        gunzip(bytes, limits.max_decompressed_bytes).with_context(|| {
            format!("{name}: cannot decompress (a truncated or corrupt gzip stream)")
        })?
    } else {
        bytes.to_vec()
    };
    let header = NiftiHeader::from_reader(raw.as_slice())
        .with_context(|| format!("{name}: not a NIfTI-1 file (bad or short header)"))?;
    let dims = checked_dims(what, &header)?;
    limits
        .check_voxels(&dims)
        .with_context(|| name.to_string())?;
    let needed = dims.iter().product::<usize>() as u64 * header.bitpix.max(8) as u64 / 8;
    let available = (raw.len() as u64).saturating_sub(header.vox_offset.max(0.0) as u64);
    if needed > available {
        bail!("{name}: the header promises {needed} bytes of voxels, the file holds {available}");
    }
    let obj = nifti::InMemNiftiObject::from_reader(raw.as_slice())
        .with_context(|| format!("{name}: cannot read as NIfTI-1"))?;
    from_object(obj, what)
}

fn gunzip(bytes: &[u8], max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(max + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > max {
        bail!("it expands beyond the limit of {max} bytes");
    }
    Ok(out)
}

/// The volume's (nx, ny, nz), once the header's voxel type is one we read and its bits per
/// voxel agree with that type: the reader sizes the data by `bitpix` and decodes it by
/// `datatype`, and a file where they disagree made it panic.
fn checked_dims(path: &Path, header: &NiftiHeader) -> Result<[usize; 3]> {
    let dtype = readable_type(path, header)?;
    let bits = dtype.size_of() * 8;
    if header.bitpix as usize != bits {
        bail!(
            "{}: bitpix is {} but the voxel type {dtype:?} has {bits} bits",
            path.display(),
            header.bitpix
        );
    }
    volume_dims(path, header)
}

fn readable_type(path: &Path, header: &NiftiHeader) -> Result<NiftiType> {
    let dtype = header.data_type().with_context(|| {
        format!(
            "{}: unknown NIfTI datatype code {}",
            path.display(),
            header.datatype
        )
    })?;
    if !READABLE.iter().any(|(t, _)| *t == dtype) {
        let names: Vec<&str> = READABLE.iter().map(|(_, n)| *n).collect();
        bail!(
            "{}: voxel type {dtype:?} is not supported; expected one of {}",
            path.display(),
            names.join(", ")
        );
    }
    Ok(dtype)
}

fn from_object(obj: nifti::InMemNiftiObject, path: &Path) -> Result<NiftiVolume> {
    let header = obj.header().clone();
    let dims = checked_dims(path, &header)?;
    let array = obj
        .into_volume()
        .into_ndarray::<f32>()
        .with_context(|| format!("{}: cannot decode the voxel data", path.display()))?;
    // The crate builds the array in Fortran order: memory order is x fastest.
    let data = match array.as_slice_memory_order() {
        Some(values) if array.t().is_standard_layout() => values.to_vec(),
        _ => array.t().iter().copied().collect(),
    };
    let expected: usize = dims.iter().product();
    if data.len() != expected {
        bail!(
            "{}: {} voxels decoded, expected {expected} for dims {dims:?}",
            path.display(),
            data.len()
        );
    }
    let [_, px, py, pz, ..] = header.pixdim;
    let spacing = [px, py, pz].map(|p| match p.abs() {
        s if s > 0.0 && s.is_finite() => s,
        _ => 1.0,
    });
    let affine = affine(&header);
    Ok(NiftiVolume {
        volume: Volume {
            dims,
            data,
            spacing,
            affine,
        },
        header,
    })
}

/// Voxel to world: the sform when its code is set, else the qform, else the voxel sizes
/// alone (NIfTI-1's three methods, in its order of preference).
fn affine(h: &NiftiHeader) -> [[f32; 4]; 4] {
    if h.sform_code > 0 {
        return [h.srow_x, h.srow_y, h.srow_z, [0.0, 0.0, 0.0, 1.0]];
    }
    let (dx, dy, dz) = (h.pixdim[1], h.pixdim[2], h.pixdim[3]);
    if h.qform_code <= 0 {
        return [
            [dx, 0.0, 0.0, 0.0],
            [0.0, dy, 0.0, 0.0],
            [0.0, 0.0, dz, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
    }
    let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let a = (1.0 - b * b - c * c - d * d).max(0.0).sqrt();
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - b * b - c * c,
        ],
    ];
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let zoom = [dx as f64, dy as f64, qfac * dz as f64];
    let offset = [h.quatern_x, h.quatern_y, h.quatern_z];
    let row = |r: [f64; 3], offset: f32| {
        let [a, b, c] = r;
        let [zx, zy, zz] = zoom;
        [(a * zx) as f32, (b * zy) as f32, (c * zz) as f32, offset]
    };
    let [r0, r1, r2] = r;
    let [ox, oy, oz] = offset;
    [row(r0, ox), row(r1, oy), row(r2, oz), [0.0, 0.0, 0.0, 1.0]]
}

/// (nx, ny, nz) of a 2D, 3D or single-frame 4D volume.
fn volume_dims(path: &Path, header: &NiftiHeader) -> Result<[usize; 3]> {
    let dim = header
        .dim()
        .with_context(|| format!("{}: invalid dim field {:?}", path.display(), header.dim))?;
    let d = |i: usize| dim.get(i).map_or(1, |&v| v as usize);
    if dim.iter().skip(3).any(|&v| v > 1) {
        bail!(
            "{}: dims {dim:?}: expected a 3D volume (a 4D one with a single frame at most)",
            path.display()
        );
    }
    Ok([d(0), d(1), d(2)])
}

/// Writes a uint8 label volume on the grid of `like` (shape, affine, orientation and
/// spacing from its header), through a temporary file and a rename. `labels` is x-fastest
/// like `Volume::data`.
pub fn write_labels(path: &Path, labels: &[u8], like: &NiftiVolume) -> Result<()> {
    write_on_grid(path, labels.to_vec(), like, "labels")
}

/// Writes a volume's values as float32 with its header's geometry (temporary file, rename).
pub fn write_image(path: &Path, image: &NiftiVolume) -> Result<()> {
    write_on_grid(path, image.volume.data.clone(), image, "values")
}

fn write_on_grid<T>(path: &Path, values: Vec<T>, like: &NiftiVolume, what: &str) -> Result<()>
where
    T: nifti::DataElement + bytemuck::Pod,
{
    let [nx, ny, nz] = like.volume.dims;
    if values.len() != nx * ny * nz {
        bail!(
            "{}: {} {what} for a {nx} x {ny} x {nz} volume",
            path.display(),
            values.len()
        );
    }
    let array = ndarray::Array::from_shape_vec((nx, ny, nz).f(), values).context("volume shape")?;
    let mut header = like.header.clone();
    header.cal_min = 0.0;
    header.cal_max = 0.0;
    header.scl_slope = 1.0;
    header.scl_inter = 0.0;
    let tmp = partial_path(path);
    nifti::writer::WriterOptions::new(&tmp)
        .reference_header(&header)
        .write_nifti(&array)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// `seg.nii.gz` -> `.seg_partial.nii.gz`, beside it. The writer re-derives its file name
/// by dropping the last extension and adding `.nii` or `.nii.gz`, so the temporary stem may
/// hold no dot (`a.b.nii` would otherwise be written as `a.nii`).
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = match name.strip_suffix(".nii.gz") {
        Some(stem) => (stem, "nii.gz"),
        None => (name.strip_suffix(".nii").unwrap_or(&name), "nii"),
    };
    path.with_file_name(format!(".{}_partial.{ext}", stem.replace('.', "_")))
}
