//! Data: dataset layouts, samples, prompts, transforms and the batch loader.

pub mod chunks;
pub mod decathlon;
pub mod layout;
pub mod prompts;
pub mod sample;
pub mod synthetic;
pub mod synthetic_dicom;
pub mod transform;
