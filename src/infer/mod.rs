//! Inference: a Predictor over image embeddings, and the embedding cache.

// No panic on user data (RELIABILITY.md): an index or unwrap here is either an error or
// carries its proof in an `expect(..., reason)`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

pub mod embedding_cache;
pub mod predictor;
pub mod volume;

pub use embedding_cache::EmbeddingCache;
pub use predictor::{Embedded, Prediction, Predictor};
