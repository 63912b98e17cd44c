//! `msa`: Segment Anything with Medical SAM Adapter, in Rust.
//!
//! The data flows one way: files -> data -> model -> training / inference -> files.

pub mod cli;
pub mod data;
pub mod eval;
pub mod fuzz;
pub mod infer;
pub mod io;
pub mod kernels;
pub mod model;
pub mod params;
pub mod preprocess;
#[cfg(feature = "python")]
mod python;
pub mod resize;
pub mod runtime;
pub mod serve;
pub mod train;
pub mod weights;

/// The README's Rust example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
