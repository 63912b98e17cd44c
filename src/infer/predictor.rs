//! `Predictor`: encode an image once, then answer many prompts from the cached embedding.

use crate::io::prompt::UserPrompt;
use crate::model::mask_decoder::ImageContext;
use crate::model::{MaskSelection, Prompts, Sam};
use anyhow::{bail, Result};
use candle_core::Tensor;
use image::RgbImage;

/// Masks for one prompt set: `masks_logits` (M, H, W) at the original size,
/// `low_res_logits` (M, 4S/16, 4S/16) and `iou` (M).
pub struct Prediction {
    pub masks_logits: Tensor,
    pub low_res_logits: Tensor,
    pub iou: Tensor,
}

impl Prediction {
    /// Mask `m` thresholded at logit 0, row-major.
    pub fn binary_mask(&self, m: usize) -> Result<Vec<bool>> {
        let v = self.masks_logits.get(m)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(v.into_iter().map(|x| x > 0.0).collect())
    }

    pub fn iou_values(&self) -> Result<Vec<f32>> {
        Ok(self.iou.to_vec1::<f32>()?)
    }
}

/// An encoded image with what the decoder reuses across prompts: kept by callers that
/// answer prompts on many images (a server) and hand it back with `set_embedded`.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub features: Tensor,
    pub context: ImageContext,
    pub input_size: (usize, usize),
    pub original_size: (usize, usize),
}

pub struct Predictor<'a> {
    sam: &'a Sam,
    features: Option<Tensor>,
    context: Option<ImageContext>,
    original_size: (usize, usize),
    input_size: (usize, usize),
}

impl<'a> Predictor<'a> {
    pub fn new(sam: &'a Sam) -> Self {
        Self {
            sam,
            features: None,
            context: None,
            original_size: (0, 0),
            input_size: (0, 0),
        }
    }

    /// Prepares an RGB image as the backbone expects (resize, normalise, pad) and encodes it.
    pub fn set_image(&mut self, img: &RgbImage) -> Result<()> {
        self.set_image_with(img, |encode| encode())
    }

    /// `set_image` with the embedding taken from `cache` under `key` when it holds one.
    pub fn set_image_cached(
        &mut self,
        img: &RgbImage,
        key: &str,
        cache: &mut super::EmbeddingCache,
    ) -> Result<()> {
        self.set_image_with(img, |encode| cache.get_or_insert(key, encode))
    }

    /// Prepares `img` and gets its embedding through `fetch`, which is handed the encoder.
    fn set_image_with(
        &mut self,
        img: &RgbImage,
        fetch: impl FnOnce(&mut dyn FnMut() -> Result<Tensor>) -> Result<Tensor>,
    ) -> Result<()> {
        let original = (img.height() as usize, img.width() as usize);
        if original.0 == 0 || original.1 == 0 {
            bail!("empty image");
        }
        let input = crate::preprocess::model_input(img, &self.sam.config);
        let (sam, s) = (self.sam, self.sam.config.img_size);
        let mut data = Some(input.data);
        let mut encode = || -> Result<Tensor> {
            let data = data.take().unwrap_or_default();
            let x = Tensor::from_vec(data, (1, 3, s, s), sam.device())?;
            Ok(sam.encode(&x)?)
        };
        let features = fetch(&mut encode)?;
        self.set_embedding(features, input.input_size, original)
    }

    /// An image embedding (1, C, G, G) computed elsewhere (a volume's chunk, a cache), for
    /// an input whose unpadded part is `input_size` of an `original_size` image.
    pub fn set_embedding(
        &mut self,
        features: Tensor,
        input_size: (usize, usize),
        original_size: (usize, usize),
    ) -> Result<()> {
        self.context = Some(self.sam.decoder_context(&features)?);
        self.features = Some(features);
        self.input_size = input_size;
        self.original_size = original_size;
        Ok(())
    }

    /// An image already resized so that its longer side is S: (1, 3, h, w) in 0..255.
    pub fn set_input(&mut self, input: &Tensor, original_size: (usize, usize)) -> Result<()> {
        let (_, _, h, w) = input.dims4()?;
        let x = self.sam.preprocess(input)?;
        self.set_encoder_input(&x, (h, w), original_size)
    }

    /// An encoder input (1, 3, S, S) already prepared; `input_size` is its unpadded part.
    pub fn set_encoder_input(
        &mut self,
        x: &Tensor,
        input_size: (usize, usize),
        original_size: (usize, usize),
    ) -> Result<()> {
        let features = self.sam.encode(x)?;
        self.set_embedding(features, input_size, original_size)
    }

    /// The current image's embedding, once `set_image` (or another setter) has run.
    pub fn embedded(&self) -> Option<Embedded> {
        Some(Embedded {
            features: self.features.clone()?,
            context: self.context.clone()?,
            input_size: self.input_size,
            original_size: self.original_size,
        })
    }

    pub fn set_embedded(&mut self, e: Embedded) {
        self.features = Some(e.features);
        self.context = Some(e.context);
        self.input_size = e.input_size;
        self.original_size = e.original_size;
    }

    pub fn features(&self) -> Option<&Tensor> {
        self.features.as_ref()
    }

    pub fn original_size(&self) -> (usize, usize) {
        self.original_size
    }

    fn scale_xy(&self) -> (f32, f32) {
        crate::preprocess::coords_scale(&self.sam.config, self.original_size, self.input_size)
    }

    /// Model prompts for N prompt sets given in original-image pixels.
    pub fn model_prompts(&self, sets: &[UserPrompt]) -> Result<Prompts> {
        let (sx, sy) = self.scale_xy();
        let scaled: Vec<UserPrompt> = sets
            .iter()
            .map(|s| UserPrompt {
                points: s
                    .points
                    .iter()
                    .map(|&(x, y, l)| (x * sx, y * sy, l))
                    .collect(),
                bbox: s
                    .bbox
                    .map(|[x0, y0, x1, y1]| [x0 * sx, y0 * sy, x1 * sx, y1 * sy]),
            })
            .collect();
        prompt_tensors(&scaled, self.sam.device())
    }

    /// Masks for each prompt set against the cached embedding (SAM's output selection).
    pub fn predict_batch(&self, sets: &[UserPrompt], multimask: bool) -> Result<Vec<Prediction>> {
        self.predict_selected(sets, MaskSelection::Sam { multimask })
    }

    /// One mask per class (MSA's selection: the first `classes` mask tokens).
    pub fn predict_classes(&self, prompt: &UserPrompt, classes: usize) -> Result<Prediction> {
        let mut v = self.predict_selected(
            std::slice::from_ref(prompt),
            MaskSelection::Classes(classes),
        )?;
        Ok(v.remove(0))
    }

    /// One mask per class, with the low-resolution logits of an earlier prediction
    /// (1, 1, lh, lw) as SAM's mask prompt where given (an interactive refinement).
    pub fn predict_classes_refined(
        &self,
        prompt: &UserPrompt,
        classes: usize,
        previous: Option<&Tensor>,
    ) -> Result<Prediction> {
        let mut prompts = self.model_prompts(std::slice::from_ref(prompt))?;
        prompts.masks = previous.cloned();
        let mut v = self.decode_prompts(&prompts, 1, MaskSelection::Classes(classes))?;
        Ok(v.remove(0))
    }

    pub fn predict_selected(
        &self,
        sets: &[UserPrompt],
        selection: MaskSelection,
    ) -> Result<Vec<Prediction>> {
        let prompts = self.model_prompts(sets)?;
        self.decode_prompts(&prompts, sets.len(), selection)
    }

    fn decode_prompts(
        &self,
        prompts: &Prompts,
        n: usize,
        selection: MaskSelection,
    ) -> Result<Vec<Prediction>> {
        let (Some(features), Some(ctx)) = (&self.features, &self.context) else {
            bail!("set_image must be called before predict");
        };
        let out = self.sam.decode_cached(features, ctx, prompts)?;
        let (low, iou) = out.select(selection)?;
        let masks = self
            .sam
            .postprocess_masks(&low, self.input_size, self.original_size)?;
        (0..n)
            .map(|i| {
                Ok(Prediction {
                    masks_logits: masks.get(i)?,
                    low_res_logits: low.get(i)?,
                    iou: iou.get(i)?,
                })
            })
            .collect()
    }

    pub fn predict(&self, prompt: &UserPrompt, multimask: bool) -> Result<Prediction> {
        let mut v = self.predict_batch(std::slice::from_ref(prompt), multimask)?;
        Ok(v.remove(0))
    }
}

/// Model prompts for N prompt sets already in the input frame; point and box counts must
/// agree across sets.
pub fn prompt_tensors(sets: &[UserPrompt], dev: &candle_core::Device) -> Result<Prompts> {
    let n = sets.len();
    let Some(first) = sets.first() else {
        bail!("no prompt sets given");
    };
    let n_points = first.points.len();
    let has_box = first.bbox.is_some();
    if sets
        .iter()
        .any(|s| s.points.len() != n_points || s.bbox.is_some() != has_box)
    {
        bail!("every prompt set in a batch needs the same number of points and boxes");
    }
    let points = if n_points > 0 {
        let coords: Vec<f32> = sets
            .iter()
            .flat_map(|s| s.points.iter().flat_map(|&(x, y, _)| [x, y]))
            .collect();
        let labels: Vec<f32> = sets
            .iter()
            .flat_map(|s| s.points.iter().map(|&(_, _, l)| l as f32))
            .collect();
        Some((
            Tensor::from_vec(coords, (n, n_points, 2), dev)?,
            Tensor::from_vec(labels, (n, n_points), dev)?,
        ))
    } else {
        None
    };
    let boxes = if has_box {
        let b: Vec<f32> = sets
            .iter()
            .flat_map(|s| s.bbox.unwrap_or_default())
            .collect();
        Some(Tensor::from_vec(b, (n, 4), dev)?)
    } else {
        None
    };
    Ok(Prompts {
        points,
        boxes,
        masks: None,
    })
}
