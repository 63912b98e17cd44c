//! A 3D scalar volume in memory, laid out as NIfTI stores it.

/// Voxel values with their geometry. `data` is x-fastest: voxel (x, y, k) is at
/// `x + nx * (y + ny * k)`, so slice k (`data[:, :, k]` of the NIfTI array) is one
/// contiguous run of nx * ny values, x along the first axis.
#[derive(Debug, Clone)]
pub struct Volume {
    /// (nx, ny, nz).
    pub dims: [usize; 3],
    /// Values after the file's scaling (NIfTI scl_slope/scl_inter, DICOM rescale).
    pub data: Vec<f32>,
    /// Voxel size in mm along the three axes.
    pub spacing: [f32; 3],
    /// Voxel index (x, y, k, 1) to world coordinates in mm, row-major.
    pub affine: [[f32; 4]; 4],
}

impl Volume {
    pub fn slice_len(&self) -> usize {
        let [nx, ny, _] = self.dims;
        nx * ny
    }

    /// Slice k: nx * ny values, x fastest.
    pub fn slice(&self, k: usize) -> anyhow::Result<&[f32]> {
        plane(&self.data, self.dims, k)
    }

    /// The smallest and largest value (0, 0 for an empty volume).
    pub fn min_max(&self) -> (f32, f32) {
        let mut it = self.data.iter().copied().filter(|v| v.is_finite());
        let Some(first) = it.next() else {
            return (0.0, 0.0);
        };
        it.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v)))
    }
}

/// Plane k of an x-fastest array of `dims` (image values or labels), or an error naming k
/// and the depth.
pub fn plane<T>(data: &[T], dims: [usize; 3], k: usize) -> anyhow::Result<&[T]> {
    let [nx, ny, nz] = dims;
    let n = nx * ny;
    k.checked_mul(n)
        .and_then(|a| data.get(a..a.checked_add(n)?))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "slice {k} is outside a volume of {nz} slices ({} values for {dims:?})",
                data.len()
            )
        })
}

/// Slice k as an 8-bit RGB image (gray repeated), width nx and height ny.
pub fn slice_image(vol: &Volume, k: usize, range: (f32, f32)) -> anyhow::Result<::image::RgbImage> {
    use anyhow::Context;
    let gray = super::Intensity::to_gray(vol.slice(k)?, range);
    let rgb: Vec<u8> = gray.iter().flat_map(|&g| [g, g, g]).collect();
    let [nx, ny, _] = vol.dims;
    ::image::RgbImage::from_raw(nx as u32, ny as u32, rgb)
        .with_context(|| format!("slice {k} does not hold {nx} x {ny} pixels"))
}

/// The d slice indices of a chunk starting at `start`, clamped to the volume.
pub fn chunk_slices(start: usize, d: usize, nz: usize) -> Vec<usize> {
    (start..start + d)
        .map(|k| k.min(nz.saturating_sub(1)))
        .collect()
}
