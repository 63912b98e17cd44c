//! The image encoder behind one interface: SAM's ViT or TinyViT (LiteMedSAM, MobileSAM).
//! Whatever the backbone, a batch of preprocessed images becomes image embeddings
//! (B, prompt_embed_dim, grid, grid); the rest of the model sees nothing else.

use super::adapter::AdapterConfig;
use super::config::{EncoderConfig, SamConfig};
use super::options::ModelOptions;
use super::recompute::Recompute;
use super::tiny_vit::TinyVitEncoder;
use super::vit::VitEncoder;
use crate::params::Params;
use candle_core::{Result, Tensor};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum ImageEncoder {
    Vit(VitEncoder),
    TinyVit(TinyVitEncoder),
}

impl ImageEncoder {
    pub fn load(
        p: &Params,
        cfg: &SamConfig,
        ad: &AdapterConfig,
        opts: &ModelOptions,
    ) -> Result<Self> {
        Ok(match &cfg.encoder {
            EncoderConfig::Vit(v) => Self::Vit(VitEncoder::load(p, cfg, v, ad, opts.attention)?),
            EncoderConfig::TinyVit(t) => Self::TinyVit(TinyVitEncoder::load(p, cfg, t, ad)?),
        })
    }

    /// (B, 3, S, S) preprocessed images -> (B, D, grid, grid).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_slices(x, None)
    }

    /// Like `forward`; with `depth` = Some(D) the batch is volumes of D consecutive slices
    /// and every adapted block's depth branch runs.
    pub fn forward_slices(&self, x: &Tensor, depth: Option<usize>) -> Result<Tensor> {
        self.forward_recomputed(x, depth, None)
    }

    /// `forward_slices`; with `recompute`, every attention block keeps no activations and
    /// runs again in the backward pass (`--checkpoint-blocks`).
    pub fn forward_recomputed(
        &self,
        x: &Tensor,
        depth: Option<usize>,
        recompute: Option<&Arc<Recompute>>,
    ) -> Result<Tensor> {
        match self {
            Self::Vit(e) => e.forward(x, depth, recompute),
            Self::TinyVit(e) => e.forward(x, depth, recompute),
        }
    }

    pub fn vit(&self) -> Option<&VitEncoder> {
        match self {
            Self::Vit(e) => Some(e),
            Self::TinyVit(_) => None,
        }
    }
}
