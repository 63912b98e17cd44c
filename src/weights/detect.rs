//! Which architecture a checkpoint holds, read from its tensor shapes.

use super::checkpoint::Checkpoint;
use crate::model::config::{EncoderConfig, SamConfig, TinyVitConfig, PRESETS};
use anyhow::{bail, Context, Result};

const PATCH_KEY: &str = "image_encoder.patch_embed.proj.weight";
const POS_KEY: &str = "image_encoder.pos_embed";
const TINY_PATCH_KEY: &str = "image_encoder.patch_embed.seq.0.c.weight";

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

/// The input size the checkpoint was trained at (from `pos_embed` and the patch size);
/// None for TinyViT, which has no position table.
pub fn checkpoint_image_size(ckpt: &Checkpoint) -> Option<usize> {
    let patch = ckpt.tensors.get(PATCH_KEY)?.dims().get(2).copied()?;
    let grid = ckpt.tensors.get(POS_KEY)?.dims().get(1).copied()?;
    Some(grid * patch)
}

/// The architecture of a checkpoint: a named preset when the shapes match one, else
/// "custom" with the shapes' own numbers.
pub fn detect_preset(ckpt: &Checkpoint) -> Result<(String, SamConfig)> {
    if ckpt.tensors.contains_key(TINY_PATCH_KEY) {
        let cfg = detect_tiny_vit(ckpt)?;
        let name = cfg.preset_name().unwrap_or("custom").to_string();
        return Ok((name, cfg));
    }
    if !ckpt.tensors.contains_key(PATCH_KEY) {
        bail!(
            "{}: neither `{PATCH_KEY}` (SAM's ViT) nor `{TINY_PATCH_KEY}` (TinyViT): this is \
             not a SAM checkpoint (first keys: {:?})",
            ckpt.display(),
            ckpt.tensors.keys().take(5).collect::<Vec<_>>()
        );
    }
    let embed_dim = dim(ckpt, PATCH_KEY, 0)?;
    let depth = count_indexed(ckpt, "image_encoder.blocks.");
    for name in PRESETS {
        let mut cfg = SamConfig::preset(name)?;
        let Some(vit) = cfg.vit() else { continue };
        if vit.embed_dim == embed_dim && vit.depth == depth {
            if let Some(size) = checkpoint_image_size(ckpt) {
                cfg.img_size = size;
            }
            return Ok((name.to_string(), cfg));
        }
    }
    bail!(
        "{}: ViT encoder with embed_dim {embed_dim} and depth {depth} matches no preset \
         (vit_b 768/12, vit_l 1024/24, vit_h 1280/32); describe it with --model-config FILE",
        ckpt.display()
    )
}

/// Dim `i` of the tensor under `key`, or an error naming the key.
fn dim(ckpt: &Checkpoint, key: &str, i: usize) -> Result<usize> {
    let Some(t) = ckpt.tensors.get(key) else {
        bail!(
            "{}: no `{key}`; describe the architecture with --model-config FILE",
            ckpt.display()
        );
    };
    match t.dims().get(i) {
        Some(&d) => Ok(d),
        None => bail!(
            "{}: `{key}` has shape {:?}, expected at least {} dims",
            ckpt.display(),
            t.dims(),
            i + 1
        ),
    }
}

/// A TinyViT SAM from its shapes: LiteMedSAM's layout (1x1 patch embedding, 256 px) or
/// MobileSAM's (3x3 stride 2, 1024 px). Merge strides follow the official rule.
fn detect_tiny_vit(ckpt: &Checkpoint) -> Result<SamConfig> {
    let kernel = dim(ckpt, TINY_PATCH_KEY, 2)?;
    let mut cfg = if kernel == 1 {
        SamConfig::lite_medsam()
    } else {
        SamConfig::mobile_sam()
    };
    let stages = count_indexed(ckpt, "image_encoder.layers.");
    if stages < 2 {
        bail!(
            "{}: TinyViT checkpoint with {stages} stage(s) under `image_encoder.layers.`, expected at least 2",
            ckpt.display()
        );
    }
    let layer = |i: usize| format!("image_encoder.layers.{i}.");
    let mut t = TinyVitConfig {
        patch_embed_kernel: kernel,
        patch_embed_stride: if kernel == 1 { 1 } else { 2 },
        ..TinyVitConfig::default()
    };
    t.depths = (0..stages)
        .map(|i| count_indexed(ckpt, &format!("{}blocks.", layer(i))))
        .collect();
    let c0 = dim(ckpt, &format!("{}blocks.0.conv1.c.weight", layer(0)), 1)?;
    let hidden = dim(ckpt, &format!("{}blocks.0.conv1.c.weight", layer(0)), 0)?;
    t.mbconv_expand_ratio = hidden as f64 / c0 as f64;
    // Stage 0 (MBConv) has no attention: nothing in the file gives its heads and window,
    // and nothing uses them; they keep the preset's values.
    let preset = cfg.tiny_vit().cloned().unwrap_or_default();
    t.embed_dims = vec![c0];
    let first = |v: &[usize]| {
        v.first()
            .copied()
            .context("the TinyViT preset has no stage 0")
    };
    t.num_heads = vec![first(&preset.num_heads)?];
    t.window_sizes = vec![first(&preset.window_sizes)?];
    for i in 1..stages {
        let attn = format!("{}blocks.0.attn.", layer(i));
        t.embed_dims
            .push(dim(ckpt, &format!("{attn}qkv.weight"), 1)?);
        t.num_heads
            .push(dim(ckpt, &format!("{attn}attention_biases"), 0)?);
        let offsets = dim(ckpt, &format!("{attn}attention_biases"), 1)?;
        t.window_sizes
            .push((offsets as f64).sqrt().round() as usize);
    }
    let blk = format!("{}blocks.0.", layer(1));
    let mlp_hidden = dim(ckpt, &format!("{blk}mlp.fc1.weight"), 0)?;
    let dim1 = t.embed_dims.get(1).context("stage 1 was read above")?;
    t.mlp_ratio = mlp_hidden as f64 / *dim1 as f64;
    t.local_conv_size = dim(ckpt, &format!("{blk}local_conv.c.weight"), 2)?;
    t.merge_strides = TinyVitConfig::official_merge_strides(&t.embed_dims);
    cfg.encoder = EncoderConfig::TinyVit(t);
    cfg.validate()?;
    Ok(cfg)
}
