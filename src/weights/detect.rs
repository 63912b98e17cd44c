//! Which architecture a checkpoint holds, read from its tensor shapes.

use super::checkpoint::Checkpoint;
use crate::model::config::{SamConfig, PRESETS};
use anyhow::{bail, Result};

const PATCH_KEY: &str = "image_encoder.patch_embed.proj.weight";
const POS_KEY: &str = "image_encoder.pos_embed";

/// Number of `prefix.N.` groups among the keys.
fn count_indexed(ckpt: &Checkpoint, prefix: &str) -> usize {
    ckpt.tensors
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// The input size the checkpoint was trained at (from `pos_embed` and the patch size).
pub fn checkpoint_image_size(ckpt: &Checkpoint) -> Option<usize> {
    let patch = ckpt.tensors.get(PATCH_KEY)?.dims().get(2).copied()?;
    let grid = ckpt.tensors.get(POS_KEY)?.dims().get(1).copied()?;
    Some(grid * patch)
}

/// The preset whose embed dim and depth match the checkpoint, at the checkpoint's size.
pub fn detect_preset(ckpt: &Checkpoint) -> Result<(String, SamConfig)> {
    let Some(patch) = ckpt.tensors.get(PATCH_KEY) else {
        bail!(
            "{}: no `{PATCH_KEY}`: this is not a SAM checkpoint (first keys: {:?})",
            ckpt.display(),
            ckpt.tensors.keys().take(5).collect::<Vec<_>>()
        );
    };
    let embed_dim = patch.dims()[0];
    let depth = count_indexed(ckpt, "image_encoder.blocks.");
    for name in PRESETS {
        let mut cfg = SamConfig::preset(name)?;
        if cfg.embed_dim == embed_dim && cfg.depth == depth {
            if let Some(size) = checkpoint_image_size(ckpt) {
                cfg.img_size = size;
            }
            return Ok((name.to_string(), cfg));
        }
    }
    bail!(
        "{}: encoder with embed_dim {embed_dim} and depth {depth} matches no preset \
         (vit_b 768/12, vit_l 1024/24, vit_h 1280/32); describe it with --config FILE",
        ckpt.display()
    )
}
