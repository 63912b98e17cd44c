//! SAM architecture settings and the named presets: the ViT backbones (vit_b, vit_l, vit_h)
//! and the TinyViT ones (lite_medsam, mobile_sam).

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The ViT ("ViTDet") image encoder of Meta's SAM (MSA-SPEC 1.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VitConfig {
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub out_chans: usize,
    pub window_size: usize,
    pub global_attn_indexes: Vec<usize>,
    pub use_rel_pos: bool,
    pub layer_norm_eps: f64,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self::new(768, 12, 12, [2, 5, 8, 11])
    }
}

impl VitConfig {
    fn new(embed_dim: usize, depth: usize, num_heads: usize, global: [usize; 4]) -> Self {
        Self {
            patch_size: 16,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            out_chans: 256,
            window_size: 14,
            global_attn_indexes: global.to_vec(),
            use_rel_pos: true,
            layer_norm_eps: 1e-6,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    pub fn mlp_dim(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    pub fn is_global(&self, block: usize) -> bool {
        self.window_size == 0 || self.global_attn_indexes.contains(&block)
    }

    /// Side of the attention grid of a block: the window, or the whole token grid `grid`.
    pub fn attn_size(&self, block: usize, grid: usize) -> usize {
        if self.is_global(block) {
            grid
        } else {
            self.window_size
        }
    }

    fn validate(&self, img_size: usize) -> anyhow::Result<()> {
        let checks = [
            (self.patch_size > 0, "patch_size must be positive"),
            (
                img_size.is_multiple_of(self.patch_size.max(1)),
                "img_size must be a multiple of patch_size",
            ),
            (
                self.num_heads > 0 && self.embed_dim.is_multiple_of(self.num_heads.max(1)),
                "embed_dim must be a multiple of num_heads",
            ),
            (
                self.global_attn_indexes.iter().all(|&i| i < self.depth),
                "global_attn_indexes must be below depth",
            ),
        ];
        check_all(&checks, self)
    }
}

/// The TinyViT image encoder of LiteMedSAM and MobileSAM (MSA-SPEC 1.6). Stage 0 is MBConv
/// blocks; stages 1.. are TinyViT attention blocks; every stage but the last ends in a merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TinyVitConfig {
    pub embed_dims: Vec<usize>,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub window_sizes: Vec<usize>,
    pub mlp_ratio: f64,
    pub mbconv_expand_ratio: f64,
    pub local_conv_size: usize,
    /// Both patch-embedding convs: kernel (padding kernel / 2) and stride.
    pub patch_embed_kernel: usize,
    pub patch_embed_stride: usize,
    /// Stride of each merge's depthwise conv (one per stage but the last).
    pub merge_strides: Vec<usize>,
}

impl Default for TinyVitConfig {
    fn default() -> Self {
        Self::lite_medsam()
    }
}

impl TinyVitConfig {
    fn lite_medsam() -> Self {
        Self {
            embed_dims: vec![64, 128, 160, 320],
            depths: vec![2, 2, 6, 2],
            num_heads: vec![2, 4, 5, 10],
            window_sizes: vec![7, 7, 14, 7],
            mlp_ratio: 4.0,
            mbconv_expand_ratio: 4.0,
            local_conv_size: 3,
            patch_embed_kernel: 1,
            patch_embed_stride: 1,
            merge_strides: vec![2, 2, 1],
        }
    }

    fn mobile_sam() -> Self {
        Self {
            patch_embed_kernel: 3,
            patch_embed_stride: 2,
            ..Self::lite_medsam()
        }
    }

    /// The official merge rule: stride 1 when the merge's output dim is 320, 448 or 576.
    pub fn official_merge_strides(embed_dims: &[usize]) -> Vec<usize> {
        embed_dims[1..]
            .iter()
            .map(|d| if [320, 448, 576].contains(d) { 1 } else { 2 })
            .collect()
    }

    pub fn stages(&self) -> usize {
        self.embed_dims.len()
    }

    /// Side of the token grid of each stage for an input of side `img_size`.
    pub fn stage_grids(&self, img_size: usize) -> Vec<usize> {
        let (k, s) = (self.patch_embed_kernel, self.patch_embed_stride);
        let conv = |n: usize, k: usize, s: usize| (n + 2 * (k / 2)).saturating_sub(k) / s + 1;
        let mut g = conv(conv(img_size, k, s), k, s);
        let mut grids = vec![g];
        for &stride in &self.merge_strides {
            g = conv(g, 3, stride);
            grids.push(g);
        }
        grids
    }

    pub fn mlp_dim(&self, stage: usize) -> usize {
        (self.embed_dims[stage] as f64 * self.mlp_ratio) as usize
    }

    pub fn mbconv_dim(&self) -> usize {
        (self.embed_dims[0] as f64 * self.mbconv_expand_ratio) as usize
    }

    fn validate(&self, img_size: usize) -> anyhow::Result<()> {
        let n = self.stages();
        let same_len = [
            self.depths.len(),
            self.num_heads.len(),
            self.window_sizes.len(),
        ]
        .iter()
        .all(|&l| l == n);
        let checks = [
            (n >= 2, "a TinyViT needs at least two stages"),
            (
                same_len,
                "embed_dims, depths, num_heads and window_sizes need one entry per stage",
            ),
            (
                self.merge_strides.len() + 1 == n,
                "merge_strides needs one entry per stage but the last",
            ),
            (
                self.merge_strides.iter().all(|&s| s >= 1)
                    && self.patch_embed_stride >= 1
                    && self.patch_embed_kernel >= 1,
                "strides and kernels must be positive",
            ),
            (
                same_len
                    && (1..n).all(|i| {
                        self.num_heads[i] > 0
                            && self.embed_dims[i].is_multiple_of(self.num_heads[i])
                            && self.window_sizes[i] > 0
                    }),
                "every attention stage needs a window and an embed dim that is a multiple of its heads",
            ),
            (
                self.local_conv_size % 2 == 1,
                "local_conv_size must be odd",
            ),
            (img_size >= 4, "img_size is too small"),
        ];
        check_all(&checks, self)
    }
}

fn check_all(checks: &[(bool, &str)], cfg: &impl std::fmt::Debug) -> anyhow::Result<()> {
    for (ok, msg) in checks {
        anyhow::ensure!(*ok, "{msg} (config: {cfg:?})");
    }
    Ok(())
}

/// The image encoder of a SAM model, tagged by `backbone` in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backbone", rename_all = "snake_case")]
pub enum EncoderConfig {
    Vit(VitConfig),
    TinyVit(TinyVitConfig),
}

/// How an image becomes the encoder's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Preprocess {
    /// SAM (MSA-SPEC 1.4): bilinear resize, normalise by pixel_mean/pixel_std.
    #[default]
    Sam,
    /// LiteMedSAM (MSA-SPEC 1.6): area resize, min-max to [0, 1].
    MinMax,
}

/// Every number that fixes the shape of a SAM model. Field names follow the `config` object
/// of the golden fixtures, so such a file can be passed as `--model-config` directly; without a
/// `backbone` field it is a ViT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamConfig {
    pub img_size: usize,
    pub in_chans: usize,
    #[serde(flatten)]
    pub encoder: EncoderConfig,
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
    pub preprocess: Preprocess,
}

impl Default for SamConfig {
    fn default() -> Self {
        Self::vit_b()
    }
}

/// The presets users name on the command line.
pub const PRESETS: [&str; 5] = ["vit_b", "vit_l", "vit_h", "lite_medsam", "mobile_sam"];

impl SamConfig {
    fn with_encoder(encoder: EncoderConfig, img_size: usize) -> Self {
        Self {
            img_size,
            in_chans: 3,
            encoder,
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
            preprocess: Preprocess::Sam,
        }
    }

    pub fn vit_b() -> Self {
        Self::with_encoder(EncoderConfig::Vit(VitConfig::default()), 1024)
    }

    pub fn vit_l() -> Self {
        let vit = VitConfig::new(1024, 24, 16, [5, 11, 17, 23]);
        Self::with_encoder(EncoderConfig::Vit(vit), 1024)
    }

    pub fn vit_h() -> Self {
        let vit = VitConfig::new(1280, 32, 16, [7, 15, 23, 31]);
        Self::with_encoder(EncoderConfig::Vit(vit), 1024)
    }

    /// LiteMedSAM: TinyViT at 256 px with a 1x1 patch embedding and its own preprocessing.
    pub fn lite_medsam() -> Self {
        let tiny = TinyVitConfig::lite_medsam();
        Self {
            preprocess: Preprocess::MinMax,
            ..Self::with_encoder(EncoderConfig::TinyVit(tiny), 256)
        }
    }

    /// MobileSAM: TinyViT at 1024 px with the strided patch embedding, SAM's preprocessing.
    pub fn mobile_sam() -> Self {
        Self::with_encoder(EncoderConfig::TinyVit(TinyVitConfig::mobile_sam()), 1024)
    }

    pub fn preset(name: &str) -> anyhow::Result<Self> {
        match name {
            "vit_b" => Ok(Self::vit_b()),
            "vit_l" => Ok(Self::vit_l()),
            "vit_h" => Ok(Self::vit_h()),
            "lite_medsam" => Ok(Self::lite_medsam()),
            "mobile_sam" => Ok(Self::mobile_sam()),
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
    /// fixture files have). Missing fields take the values of vit_b, or of lite_medsam for
    /// `"backbone": "tiny_vit"`.
    pub fn from_json_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))?;
        Self::from_json_value(value).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn from_json_value(value: serde_json::Value) -> anyhow::Result<Self> {
        let mut inner = value.get("config").cloned().unwrap_or(value);
        let Some(obj) = inner.as_object_mut() else {
            anyhow::bail!("a SAM config must be a JSON object");
        };
        let backbone = obj
            .entry("backbone")
            .or_insert_with(|| "vit".into())
            .clone();
        let tiny = backbone == "tiny_vit";
        if tiny && !obj.contains_key("preprocess") {
            // The 1x1 patch embedding is LiteMedSAM's layout, which has its own preprocessing.
            let k = obj.get("patch_embed_kernel").and_then(|v| v.as_u64());
            let lite = k.unwrap_or(1) == 1;
            obj.insert(
                "preprocess".into(),
                if lite { "min_max" } else { "sam" }.into(),
            );
        }
        let mut base = serde_json::to_value(if tiny {
            Self::lite_medsam()
        } else {
            Self::vit_b()
        })?;
        if let (Some(base), Some(given)) = (base.as_object_mut(), inner.as_object()) {
            base.extend(given.clone());
        }
        let cfg: Self =
            serde_json::from_value(base).map_err(|e| anyhow::anyhow!("bad SAM config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        match &self.encoder {
            EncoderConfig::Vit(v) => v.validate(self.img_size)?,
            EncoderConfig::TinyVit(t) => t.validate(self.img_size)?,
        }
        let checks = [
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
                self.iou_head_depth >= 1,
                "iou_head_depth must be at least 1",
            ),
        ];
        check_all(&checks, self)
    }

    pub fn vit(&self) -> Option<&VitConfig> {
        match &self.encoder {
            EncoderConfig::Vit(v) => Some(v),
            EncoderConfig::TinyVit(_) => None,
        }
    }

    pub fn tiny_vit(&self) -> Option<&TinyVitConfig> {
        match &self.encoder {
            EncoderConfig::TinyVit(t) => Some(t),
            EncoderConfig::Vit(_) => None,
        }
    }

    /// "vit" or "tiny_vit".
    pub fn backbone_name(&self) -> &'static str {
        match self.encoder {
            EncoderConfig::Vit(_) => "vit",
            EncoderConfig::TinyVit(_) => "tiny_vit",
        }
    }

    /// Side of the image-embedding grid (S/16 for SAM's ViT, S/4 for LiteMedSAM).
    pub fn grid(&self) -> usize {
        match &self.encoder {
            EncoderConfig::Vit(v) => self.img_size / v.patch_size,
            EncoderConfig::TinyVit(t) => *t.stage_grids(self.img_size).last().unwrap_or(&1),
        }
    }

    pub fn num_mask_tokens(&self) -> usize {
        self.num_multimask_outputs + 1
    }
}
