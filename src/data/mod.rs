//! Data: dataset layouts, samples, prompts, transforms and the batch loader.

// No panic on user data (RELIABILITY.md): an index or unwrap here is either an error or
// carries its proof in an `expect(..., reason)`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

pub mod chunks;
pub mod corrective;
pub mod decathlon;
pub mod layout;
pub mod prompts;
pub mod sample;
pub mod synthetic;
pub mod synthetic_dicom;
pub mod transform;
