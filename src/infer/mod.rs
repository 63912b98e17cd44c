//! Inference: a Predictor over image embeddings, and the embedding cache.

pub mod embedding_cache;
pub mod predictor;

pub use embedding_cache::EmbeddingCache;
pub use predictor::{Prediction, Predictor, UserPrompt};
