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
        self.dims[0] * self.dims[1]
    }

    /// Slice k: nx * ny values, x fastest.
    pub fn slice(&self, k: usize) -> &[f32] {
        let n = self.slice_len();
        &self.data[k * n..(k + 1) * n]
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
