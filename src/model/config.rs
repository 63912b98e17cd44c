//! SAM architecture settings and the named presets (vit_b, vit_l, vit_h).

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Every number that fixes the shape of a SAM model. Field names follow the `config` object
/// of the golden fixtures, so such a file can be passed as `--config` directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub out_chans: usize,
    pub window_size: usize,
    pub global_attn_indexes: Vec<usize>,
    pub use_rel_pos: bool,
    pub layer_norm_eps: f64,
    pub prompt_embed_dim: usize,
    pub mask_in_chans: usize,
    pub decoder_depth: usize,
    pub decoder_mlp_dim: usize,
    pub decoder_num_heads: usize,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
    pub pixel_mean: [f32; 3],
    pub pixel_std: [f32; 3],
}

impl Default for SamConfig {
    fn default() -> Self {
        Self::vit_b()
    }
}

/// The presets users name on the command line.
pub const PRESETS: [&str; 3] = ["vit_b", "vit_l", "vit_h"];

impl SamConfig {
    fn vit(embed_dim: usize, depth: usize, num_heads: usize, global: [usize; 4]) -> Self {
        Self {
            img_size: 1024,
            patch_size: 16,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            out_chans: 256,
            window_size: 14,
            global_attn_indexes: global.to_vec(),
            use_rel_pos: true,
            layer_norm_eps: 1e-6,
            prompt_embed_dim: 256,
            mask_in_chans: 16,
            decoder_depth: 2,
            decoder_mlp_dim: 2048,
            decoder_num_heads: 8,
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
            pixel_mean: [123.675, 116.28, 103.53],
            pixel_std: [58.395, 57.12, 57.375],
        }
    }

    pub fn vit_b() -> Self {
        Self::vit(768, 12, 12, [2, 5, 8, 11])
    }

    pub fn vit_l() -> Self {
        Self::vit(1024, 24, 16, [5, 11, 17, 23])
    }

    pub fn vit_h() -> Self {
        Self::vit(1280, 32, 16, [7, 15, 23, 31])
    }

    pub fn preset(name: &str) -> anyhow::Result<Self> {
        match name {
            "vit_b" => Ok(Self::vit_b()),
            "vit_l" => Ok(Self::vit_l()),
            "vit_h" => Ok(Self::vit_h()),
            other => anyhow::bail!("unknown preset `{other}`: expected one of {PRESETS:?}"),
        }
    }

    /// The preset this configuration equals, ignoring the input size.
    pub fn preset_name(&self) -> Option<&'static str> {
        PRESETS.into_iter().find(|name| {
            let mut preset = Self::preset(name).expect("PRESETS only lists known names");
            preset.img_size = self.img_size;
            &preset == self
        })
    }

    /// Reads a JSON config: either the bare object or a file with a `config` field (as the
    /// fixture files have). Missing fields take vit_b's values.
    pub fn from_json_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))?;
        let inner = value.get("config").cloned().unwrap_or(value);
        let cfg: Self = serde_json::from_value(inner)
            .map_err(|e| anyhow::anyhow!("{}: bad SAM config: {e}", path.display()))?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let checks = [
            (self.patch_size > 0, "patch_size must be positive"),
            (
                self.img_size.is_multiple_of(self.patch_size.max(1)),
                "img_size must be a multiple of patch_size",
            ),
            (
                self.num_heads > 0 && self.embed_dim.is_multiple_of(self.num_heads.max(1)),
                "embed_dim must be a multiple of num_heads",
            ),
            (
                self.decoder_num_heads > 0
                    && (self.prompt_embed_dim / 2).is_multiple_of(self.decoder_num_heads.max(1)),
                "prompt_embed_dim / 2 must be a multiple of decoder_num_heads",
            ),
            (
                self.prompt_embed_dim.is_multiple_of(8),
                "prompt_embed_dim must be a multiple of 8",
            ),
            (self.mask_in_chans >= 4, "mask_in_chans must be at least 4"),
            (
                self.global_attn_indexes.iter().all(|&i| i < self.depth),
                "global_attn_indexes must be below depth",
            ),
            (
                self.iou_head_depth >= 1,
                "iou_head_depth must be at least 1",
            ),
        ];
        for (ok, msg) in checks {
            anyhow::ensure!(ok, "{msg} (config: {self:?})");
        }
        Ok(())
    }

    /// Side of the image-embedding grid (S/16 for SAM).
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    pub fn mlp_dim(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    pub fn num_mask_tokens(&self) -> usize {
        self.num_multimask_outputs + 1
    }

    pub fn is_global(&self, block: usize) -> bool {
        self.window_size == 0 || self.global_attn_indexes.contains(&block)
    }

    /// Side of the attention grid of a block: the window, or the whole token grid.
    pub fn attn_size(&self, block: usize) -> usize {
        if self.is_global(block) {
            self.grid()
        } else {
            self.window_size
        }
    }

    /// Side of the low-resolution mask logits (4 * S/16).
    pub fn low_res_size(&self) -> usize {
        4 * self.grid()
    }
}
