//! Image embeddings kept in memory by case id, for work that runs a frozen encoder on the
//! same images again and again: training only the decoder (its adapters) without
//! augmentation, validating every epoch, comparing decoders on one test set. Whoever shares
//! a cache must use one encoder and one preprocessing for it.

use anyhow::Result;
use candle_core::Tensor;
use std::collections::HashMap;

pub struct EmbeddingCache {
    map: HashMap<String, Tensor>,
    budget_bytes: usize,
    used_bytes: usize,
}

impl EmbeddingCache {
    /// A cache that stops taking new embeddings beyond `budget_bytes`.
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            map: HashMap::new(),
            budget_bytes,
            used_bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The embedding (1, D, g, g) of `key`, made by `encode` when missing.
    pub fn get_or_insert(
        &mut self,
        key: &str,
        encode: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        if let Some(t) = self.map.get(key) {
            return Ok(t.clone());
        }
        let t = encode()?.detach();
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        if self.used_bytes + bytes <= self.budget_bytes {
            self.used_bytes += bytes;
            self.map.insert(key.to_string(), t.clone());
        }
        Ok(t)
    }
}
