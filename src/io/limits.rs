//! Bounds on what a decoder may allocate for data that comes from elsewhere (an upload, a
//! downloaded file): sizes are checked from the header before pixel or voxel buffers exist.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width or height of a 2D image, in pixels.
    pub max_image_side: u32,
    /// Most pixels of a 2D image (width x height).
    pub max_image_pixels: u64,
    /// Most voxels of a volume.
    pub max_voxels: u64,
    /// Most bytes a compressed file may expand to.
    pub max_decompressed_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_image_side: 16_384,
            max_image_pixels: 64 * 1024 * 1024,
            max_voxels: 256 * 1024 * 1024,
            max_decompressed_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

impl DecodeLimits {
    /// The defaults, each overridden by its environment variable when set to a number:
    /// `MSA_MAX_IMAGE_SIDE`, `MSA_MAX_IMAGE_PIXELS`, `MSA_MAX_VOXELS`,
    /// `MSA_MAX_DECOMPRESSED_BYTES`.
    pub fn from_env() -> Self {
        let d = Self::default();
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Self {
            max_image_side: var("MSA_MAX_IMAGE_SIDE")
                .map_or(d.max_image_side, |v| v.min(u32::MAX as u64) as u32),
            max_image_pixels: var("MSA_MAX_IMAGE_PIXELS").unwrap_or(d.max_image_pixels),
            max_voxels: var("MSA_MAX_VOXELS").unwrap_or(d.max_voxels),
            max_decompressed_bytes: var("MSA_MAX_DECOMPRESSED_BYTES")
                .unwrap_or(d.max_decompressed_bytes),
        }
    }

    pub fn check_image(&self, w: u32, h: u32) -> Result<()> {
        if w == 0 || h == 0 {
            bail!("the image is {w}x{h}: it has no pixels");
        }
        if w > self.max_image_side || h > self.max_image_side {
            bail!(
                "the image is {w}x{h}; the limit is {} pixels per side (MSA_MAX_IMAGE_SIDE)",
                self.max_image_side
            );
        }
        if w as u64 * h as u64 > self.max_image_pixels {
            bail!(
                "the image is {w}x{h}; the limit is {} pixels (MSA_MAX_IMAGE_PIXELS)",
                self.max_image_pixels
            );
        }
        Ok(())
    }

    pub fn check_voxels(&self, dims: &[usize]) -> Result<()> {
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        if n > self.max_voxels {
            bail!(
                "the volume is {dims:?} ({n} voxels); the limit is {} voxels (MSA_MAX_VOXELS)",
                self.max_voxels
            );
        }
        Ok(())
    }

    /// What the `image` crate may allocate while decoding (8-bit RGBA of the largest image,
    /// twice, for conversions).
    pub fn image_limits(&self) -> image::Limits {
        let mut l = image::Limits::default();
        l.max_image_width = Some(self.max_image_side);
        l.max_image_height = Some(self.max_image_side);
        l.max_alloc = Some(self.max_image_pixels.saturating_mul(16));
        l
    }
}
