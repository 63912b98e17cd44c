//! The model: SAM's three parts and the pieces they are made of.

pub mod adapter;
pub mod attention;
pub mod config;
pub mod depth;
pub mod image_encoder;
pub mod mask_decoder;
pub mod neck;
pub mod nn;
pub mod options;
pub mod own_backward;
pub mod precision;
pub mod prompt_encoder;
pub mod recompute;
pub mod rel_pos_columns;
pub mod sam;
pub mod tiny_vit;
pub mod vit;

pub use adapter::{AdapterConfig, AdapterInit};
pub use config::{EncoderConfig, Preprocess, SamConfig, TinyVitConfig, VitConfig};
pub use mask_decoder::{DecoderOutput, MaskSelection};
pub use options::{AttentionKernel, ModelOptions};
pub use prompt_encoder::Prompts;
pub use sam::Sam;
