//! Inference: a Predictor over image embeddings, and the embedding cache.

pub mod embedding_cache;
pub mod predictor;
pub mod volume;

pub use embedding_cache::EmbeddingCache;
pub use predictor::{Embedded, Prediction, Predictor, PromptFile, UserPrompt};
