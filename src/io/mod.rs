//! Files in and out, for `data/` and `infer/` alike: 2D images (PNG, JPEG, TIFF, BMP),
//! 3D volumes (NIfTI-1, DICOM series) and prompt files, with the intensity scaling that turns a CT or MRI slice into the
//! 8-bit image SAM expects.

// No panic on user data (RELIABILITY.md): an index or unwrap here is either an error or
// carries its proof in an `expect(..., reason)`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

pub mod atomic;
pub mod dicom;
pub mod image;
pub mod intensity;
pub mod nifti;
pub mod nrrd;
pub mod orientation;
pub mod prompt;
pub mod volume;
pub mod volume_file;

pub use intensity::Intensity;
pub use limits::DecodeLimits;

mod limits;
pub use volume::Volume;
