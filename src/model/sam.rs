//! The whole Segment Anything model, with SAM's pre- and post-processing.

use super::adapter::AdapterConfig;
use super::config::{Preprocess, SamConfig};
use super::image_encoder::ImageEncoder;
use super::mask_decoder::{DecoderOutput, ImageContext, MaskDecoder};
use super::options::ModelOptions;
use super::prompt_encoder::{PromptEncoder, Prompts};
use crate::params::Params;
use crate::resize::linear_matrix;
use candle_core::{Device, Result, Tensor};

#[derive(Debug, Clone)]
pub struct Sam {
    pub config: SamConfig,
    pub adapters: AdapterConfig,
    pub image_encoder: ImageEncoder,
    pub prompt_encoder: PromptEncoder,
    pub mask_decoder: MaskDecoder,
    pub dense_pe: Tensor,
    /// The dtype the frozen image encoder computes in (`--precision`); embeddings leave it
    /// as f32.
    pub encoder_dtype: candle_core::DType,
    pixel_mean: Tensor,
    pixel_std: Tensor,
}

impl Sam {
    pub fn load(p: &Params, config: &SamConfig) -> Result<Self> {
        Self::load_adapted(p, config, &AdapterConfig::none())
    }

    /// SAM with the adapters `ad` asks for; adapter tensors come from the same source when
    /// it holds them, else they are initialised (MSA-SPEC 2.4).
    pub fn load_adapted(p: &Params, config: &SamConfig, ad: &AdapterConfig) -> Result<Self> {
        Self::load_with(p, config, ad, &ModelOptions::default())
    }

    /// `load_adapted`, the layers computing as `opts` says.
    pub fn load_with(
        p: &Params,
        config: &SamConfig,
        ad: &AdapterConfig,
        opts: &ModelOptions,
    ) -> Result<Self> {
        let encoder = p.pp("image_encoder").frozen_in(opts.encoder_dtype);
        let prompt_encoder = PromptEncoder::load(&p.pp("prompt_encoder"), config)?;
        let dense_pe = prompt_encoder.dense_pe()?;
        let dev = p.device();
        Ok(Self {
            config: config.clone(),
            adapters: ad.clone(),
            image_encoder: ImageEncoder::load(&encoder, config, ad, opts)?,
            prompt_encoder,
            mask_decoder: MaskDecoder::load(&p.pp("mask_decoder"), config, ad, opts.attention)?,
            dense_pe,
            encoder_dtype: p.computes_in(opts.encoder_dtype),
            pixel_mean: Tensor::new(&config.pixel_mean, dev)?.reshape((1, 3, 1, 1))?,
            pixel_std: Tensor::new(&config.pixel_std, dev)?.reshape((1, 3, 1, 1))?,
        })
    }

    pub fn device(&self) -> &Device {
        self.dense_pe.device()
    }

    /// (B, 3, h, w) RGB in 0..255, already resized (h and w at most S) -> normalised as the
    /// backbone expects (mean/std, or min-max per image) and zero-padded to (B, 3, S, S).
    pub fn preprocess(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let s = self.config.img_size;
        if h > s || w > s {
            candle_core::bail!(
                "image {h}x{w} is larger than the model input {s}x{s}; resize it first"
            );
        }
        let x = match self.config.preprocess {
            Preprocess::Sam => x
                .broadcast_sub(&self.pixel_mean)?
                .broadcast_div(&self.pixel_std)?,
            Preprocess::MinMax => {
                let flat = x.flatten_from(1)?;
                let lo = flat.min_keepdim(1)?.unsqueeze(2)?.unsqueeze(3)?;
                let span = (flat.max_keepdim(1)?.unsqueeze(2)?.unsqueeze(3)? - &lo)?
                    .clamp(1e-8, f32::MAX)?;
                x.broadcast_sub(&lo)?.broadcast_div(&span)?
            }
        };
        x.pad_with_zeros(2, 0, s - h)?.pad_with_zeros(3, 0, s - w)
    }

    /// (B, 3, S, S) -> image embeddings (B, D, S/16, S/16).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.encode_for_training(x, None, None)
    }

    /// (V * D, 3, S, S), V volumes of D consecutive slices -> embeddings per slice, the
    /// encoder's depth branch attending across each volume's D slices (MSA-SPEC 2.2).
    pub fn encode_chunks(&self, x: &Tensor, d: usize) -> Result<Tensor> {
        self.encode_for_training(x, Some(d), None)
    }

    /// `encode` (`depth` None) or `encode_chunks` (Some(D)) for training, the encoder's
    /// blocks recomputed in the backward pass when `recompute` is given.
    pub fn encode_for_training(
        &self,
        x: &Tensor,
        depth: Option<usize>,
        recompute: Option<&std::sync::Arc<super::recompute::Recompute>>,
    ) -> Result<Tensor> {
        let x = x.to_dtype(self.encoder_dtype)?;
        let emb = self
            .image_encoder
            .forward_recomputed(&x, depth, recompute)?;
        emb.to_dtype(candle_core::DType::F32)
    }

    /// The chunk length volumes are encoded with: Some(D) when depth adapters are present.
    pub fn depth_chunk(&self) -> Option<usize> {
        self.adapters
            .depth
            .then_some(self.adapters.depth_chunk.max(1))
    }

    /// Prompt encoder and mask decoder against image embeddings (1 or B images).
    pub fn decode(&self, image_embeddings: &Tensor, prompts: &Prompts) -> Result<DecoderOutput> {
        let (sparse, dense) = self.prompt_encoder.forward(prompts)?;
        self.mask_decoder
            .forward(image_embeddings, &self.dense_pe, &sparse, &dense)
    }

    /// Per-image decoder work for prompts without a mask input (see `decode_cached`).
    pub fn decoder_context(&self, image_embedding: &Tensor) -> Result<ImageContext> {
        self.mask_decoder.image_context(
            image_embedding,
            &self.dense_pe,
            &self.prompt_encoder.no_mask_embed,
        )
    }

    /// `decode` for one image whose context is cached; prompts with a mask input go the
    /// full way, as their dense embedding depends on the prompt.
    pub fn decode_cached(
        &self,
        image_embedding: &Tensor,
        ctx: &ImageContext,
        prompts: &Prompts,
    ) -> Result<DecoderOutput> {
        if prompts.masks.is_some() {
            return self.decode(image_embedding, prompts);
        }
        let sparse = self.prompt_encoder.sparse(prompts)?;
        self.mask_decoder.forward_with_context(ctx, &sparse)
    }

    /// Low-resolution logits (.., lh, lw) to the original image size: upsample to S x S,
    /// crop to the resized input, resize to the original (bilinear both times). Both
    /// resizes are linear maps, so they run as one matrix per axis.
    pub fn postprocess_masks(
        &self,
        low_res: &Tensor,
        input_size: (usize, usize),
        original_size: (usize, usize),
    ) -> Result<Tensor> {
        let rank = low_res.rank();
        let (lh, lw) = (low_res.dim(rank - 2)?, low_res.dim(rank - 1)?);
        let s = self.config.img_size;
        let ry = postprocess_matrix(lh, s, input_size.0, original_size.0);
        let rx = postprocess_matrix(lw, s, input_size.1, original_size.1);
        let dev = low_res.device();
        let ry = Tensor::from_vec(ry, (original_size.0, lh), dev)?;
        let rx = Tensor::from_vec(rx, (original_size.1, lw), dev)?;
        crate::resize::apply_separable(low_res, &ry, &rx)
    }
}

/// (orig x low) = resize(input -> orig) · crop(input rows of) resize(low -> S).
fn postprocess_matrix(low: usize, s: usize, input: usize, orig: usize) -> Vec<f32> {
    let up = linear_matrix(low, s); // (s x low)
    let down = linear_matrix(input, orig); // (orig x input)
    let mut out = vec![0f32; orig * low];
    for o in 0..orig {
        for i in 0..input {
            let wd = down[o * input + i];
            if wd == 0.0 {
                continue;
            }
            for l in 0..low {
                out[o * low + l] += wd * up[i * low + l];
            }
        }
    }
    out
}
