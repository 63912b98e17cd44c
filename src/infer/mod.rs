//! Inference: image files in, masks and overlays out.

pub mod embedding_cache;
pub mod image_io;
pub mod predictor;

pub use embedding_cache::EmbeddingCache;
pub use predictor::{Prediction, Predictor, UserPrompt};
