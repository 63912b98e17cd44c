//! `msa`: Segment Anything with Medical SAM Adapter, in Rust.
//!
//! The data flows one way: files -> data -> model -> training / inference -> files.

pub mod infer;
pub mod model;
pub mod weights;
