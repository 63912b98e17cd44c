//! Inference: image files in, masks and overlays out.

pub mod image_io;
pub mod predictor;

pub use predictor::{Prediction, Predictor, UserPrompt};
