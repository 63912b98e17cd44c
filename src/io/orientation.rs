//! The canonical frame volumes are sliced in, whatever order and direction a file stores
//! its voxels in. Axial slices (the default) have image x toward the patient's left, image
//! y toward posterior and slice index toward superior: how a DICOM axial series is stored
//! and how a radiologist views it. Coronal is (left, inferior, posterior) and sagittal
//! (posterior, inferior, right), also as scanners store them. Voxel axes are only permuted
//! and flipped (no resampling), each taking the canonical direction it is closest to.
//! `Stored` keeps the file's own voxel order (slices along its third axis), for prompts
//! written in array indices.

#![expect(
    clippy::indexing_slicing,
    reason = "every index runs over 0..3 into [_; 3] or [[_; 4]; 4] arrays, or is a canonical \
              voxel inside `dims()` mapped onto the stored grid of the same size"
)]

use super::volume::Volume;
use anyhow::{bail, Result};

/// Which slices a volume is cut into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    #[default]
    Axial,
    Coronal,
    Sagittal,
    Stored,
}

impl std::str::FromStr for Axis {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "axial" => Ok(Axis::Axial),
            "coronal" => Ok(Axis::Coronal),
            "sagittal" => Ok(Axis::Sagittal),
            "stored" => Ok(Axis::Stored),
            other => bail!("axis `{other}`: expected axial, coronal, sagittal or stored"),
        }
    }
}

impl Axis {
    /// The canonical directions of image x, image y and the slice index, as (RAS world
    /// axis, sign); None for the stored order.
    fn frame(self) -> Option<[(usize, f32); 3]> {
        const LEFT: (usize, f32) = (0, -1.0);
        const RIGHT: (usize, f32) = (0, 1.0);
        const POSTERIOR: (usize, f32) = (1, -1.0);
        const INFERIOR: (usize, f32) = (2, -1.0);
        const SUPERIOR: (usize, f32) = (2, 1.0);
        match self {
            Axis::Axial => Some([LEFT, POSTERIOR, SUPERIOR]),
            Axis::Coronal => Some([LEFT, INFERIOR, POSTERIOR]),
            Axis::Sagittal => Some([POSTERIOR, INFERIOR, RIGHT]),
            Axis::Stored => None,
        }
    }
}

/// How a stored voxel grid maps onto the canonical one: canonical axis i is stored axis
/// `from[i]`, reversed where `flip[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reorientation {
    from: [usize; 3],
    flip: [bool; 3],
    /// The stored grid's (nx, ny, nz).
    stored: [usize; 3],
}

impl Reorientation {
    /// The reorientation of a grid of `dims` whose voxel-to-RAS affine is `affine`. Each
    /// stored axis is matched to the world axis it is closest to, the most aligned first.
    pub fn of(affine: &[[f32; 4]; 4], dims: [usize; 3], axis: Axis) -> Self {
        let identity = Self {
            from: [0, 1, 2],
            flip: [false; 3],
            stored: dims,
        };
        let Some(frame) = axis.frame() else {
            return identity;
        };
        let component = |world: usize, voxel: usize| {
            affine
                .get(world)
                .and_then(|row| row.get(voxel))
                .copied()
                .unwrap_or(0.0)
        };
        // Greedy matching by |cosine|: the strongest pairs first, each axis used once.
        let mut pairs: Vec<(f32, usize, usize)> = (0..3)
            .flat_map(|voxel| {
                let norm = (0..3)
                    .map(|w| component(w, voxel).powi(2))
                    .sum::<f32>()
                    .sqrt()
                    .max(f32::MIN_POSITIVE);
                (0..3).map(move |w| (component(w, voxel).abs() / norm, w, voxel))
            })
            .collect();
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut world_of = [usize::MAX; 3];
        let mut taken = [false; 3];
        for (_, world, voxel) in pairs {
            if world_of.get(voxel) == Some(&usize::MAX) && taken.get(world) == Some(&false) {
                world_of[voxel % 3] = world;
                taken[world % 3] = true;
            }
        }
        let mut from = [0, 1, 2];
        let mut flip = [false; 3];
        for (i, (world, sign)) in frame.into_iter().enumerate() {
            let voxel = world_of.iter().position(|&w| w == world).unwrap_or(i);
            from[i] = voxel;
            flip[i] = component(world, voxel) * sign < 0.0;
        }
        Self {
            from,
            flip,
            stored: dims,
        }
    }

    /// True when the stored grid is already canonical.
    pub fn is_identity(&self) -> bool {
        self.from == [0, 1, 2] && self.flip == [false; 3]
    }

    /// The canonical grid's (nx, ny, nz).
    pub fn dims(&self) -> [usize; 3] {
        self.from.map(|a| self.stored.get(a).copied().unwrap_or(1))
    }

    /// The stored index of canonical voxel `c`.
    fn stored_index(&self, c: [usize; 3]) -> usize {
        let dims = self.dims();
        let mut s = [0usize; 3];
        for i in 0..3 {
            let v = if self.flip[i] {
                dims[i] - 1 - c[i]
            } else {
                c[i]
            };
            s[self.from[i]] = v;
        }
        let [nx, ny, _] = self.stored;
        s[0] + nx * (s[1] + ny * s[2])
    }

    /// Stored values (x-fastest on the stored grid) in canonical order.
    pub fn apply<T: Copy + Default>(&self, stored: &[T]) -> Vec<T> {
        let [nx, ny, nz] = self.dims();
        let mut out = Vec::with_capacity(nx * ny * nz);
        for k in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    out.push(
                        stored
                            .get(self.stored_index([x, y, k]))
                            .copied()
                            .unwrap_or_default(),
                    );
                }
            }
        }
        out
    }

    /// Canonical values back in the stored order.
    pub fn undo<T: Copy + Default>(&self, canonical: &[T]) -> Vec<T> {
        let [nx, ny, nz] = self.dims();
        let mut out = vec![T::default(); canonical.len().max(self.stored.iter().product())];
        let mut i = 0;
        for k in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    if let (Some(o), Some(&v)) =
                        (out.get_mut(self.stored_index([x, y, k])), canonical.get(i))
                    {
                        *o = v;
                    }
                    i += 1;
                }
            }
        }
        out
    }

    /// The volume on the canonical grid, its affine and spacing following the voxels.
    pub fn volume(&self, stored: &Volume) -> Volume {
        let dims = self.dims();
        let mut affine = [[0.0f32; 4]; 4];
        let mut spacing = [1.0f32; 3];
        for i in 0..3 {
            let a = self.from[i];
            let sign = if self.flip[i] { -1.0 } else { 1.0 };
            for (w, row) in affine.iter_mut().enumerate().take(3) {
                row[i] = sign * stored.affine[w][a];
            }
            spacing[i] = stored.spacing[a];
        }
        // The canonical origin is the stored position of canonical voxel (0, 0, 0).
        let mut origin_index = [0.0f32; 3];
        for i in 0..3 {
            if self.flip[i] {
                origin_index[self.from[i]] = (dims[i] as f32) - 1.0;
            }
        }
        for (w, row) in affine.iter_mut().enumerate().take(3) {
            row[3] = stored.affine[w][3]
                + (0..3)
                    .map(|a| stored.affine[w][a] * origin_index[a])
                    .sum::<f32>();
        }
        affine[3] = [0.0, 0.0, 0.0, 1.0];
        Volume {
            dims,
            data: self.apply(&stored.data),
            spacing,
            affine,
        }
    }
}
