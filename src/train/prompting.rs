//! Prompts that differ within a batch: mixed kinds (a click, a box or both per sample) and
//! simulated corrective clicks (MSA-SPEC 3.1a). The decoder takes one prompt shape per
//! call, so samples go through it in groups of the same shape.

use crate::data::corrective::next_click;
use crate::data::transform::Prepared;
use crate::infer::predictor::prompt_tensors;
use crate::io::prompt::UserPrompt;
use crate::model::{MaskSelection, Sam};
use crate::resize::bilinear;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

/// Low-resolution logits (N, classes, 4h, 4w): row i of `emb` decoded under `prompts[i]`,
/// with `masks[i]` (1, 1, 4h, 4w) as its mask prompt where given.
pub(crate) fn decode_mixed(
    sam: &Sam,
    emb: &Tensor,
    prompts: &[UserPrompt],
    masks: &[Option<Tensor>],
    classes: usize,
) -> Result<Tensor> {
    let dev = emb.device();
    let mut groups: BTreeMap<(usize, bool, bool), Vec<u32>> = BTreeMap::new();
    for (i, (p, m)) in prompts.iter().zip(masks).enumerate() {
        let shape = (p.points.len(), p.bbox.is_some(), m.is_some());
        groups.entry(shape).or_default().push(i as u32);
    }
    if groups.len() == 1 {
        return decode_group(sam, emb, prompts, masks, classes);
    }
    let (mut parts, mut order) = (vec![], vec![]);
    for rows in groups.into_values() {
        let sets: Vec<UserPrompt> = rows.iter().map(|&i| prompts[i as usize].clone()).collect();
        let group_masks: Vec<Option<Tensor>> =
            rows.iter().map(|&i| masks[i as usize].clone()).collect();
        let idx = Tensor::new(rows.as_slice(), dev)?;
        let group_emb = emb.index_select(&idx, 0)?;
        parts.push(decode_group(sam, &group_emb, &sets, &group_masks, classes)?);
        order.extend(rows);
    }
    let mut back = vec![0u32; order.len()];
    for (pos, &row) in order.iter().enumerate() {
        back[row as usize] = pos as u32;
    }
    Ok(Tensor::cat(&parts, 0)?.index_select(&Tensor::new(back.as_slice(), dev)?, 0)?)
}

/// One decoder call for prompts of one shape.
fn decode_group(
    sam: &Sam,
    emb: &Tensor,
    prompts: &[UserPrompt],
    masks: &[Option<Tensor>],
    classes: usize,
) -> Result<Tensor> {
    let mut p = prompt_tensors(prompts, emb.device())?;
    let given: Vec<Tensor> = masks.iter().flatten().cloned().collect();
    p.masks = match given.len() {
        0 => None,
        n if n == masks.len() => Some(Tensor::cat(&given, 0)?),
        _ => bail!("a decoder group mixes samples with and without a mask prompt"),
    };
    let (low, _) = sam
        .decode(emb, &p)?
        .select(MaskSelection::Classes(classes))?;
    Ok(low)
}

/// Each sample's prompt after `rounds[i]` simulated corrections: a click at the largest
/// error of the previous pass (positive where the target was missed, negative where the
/// mask spills over), that pass's logits fed back as the mask prompt. These passes see a
/// detached embedding and their outputs are detached: gradients flow through the final
/// pass only. A sample with nothing left to correct gets a padding point (label -1).
pub(crate) fn corrected_prompts(
    sam: &Sam,
    emb: &Tensor,
    batch: &[Prepared],
    classes: usize,
) -> Result<(Vec<UserPrompt>, Vec<Option<Tensor>>)> {
    let dev = emb.device();
    let s = sam.config.img_size;
    let emb = emb.detach();
    let mut prompts: Vec<UserPrompt> = batch.iter().map(|p| p.prompt.clone()).collect();
    let mut masks: Vec<Option<Tensor>> = vec![None; batch.len()];
    let most = batch.iter().map(|p| p.corrections).max().unwrap_or(0);
    for round in 0..most {
        let active: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].corrections > round)
            .collect();
        let rows: Vec<u32> = active.iter().map(|&i| i as u32).collect();
        let sub_emb = emb.index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
        let sub_prompts: Vec<UserPrompt> = active.iter().map(|&i| prompts[i].clone()).collect();
        let sub_masks: Vec<Option<Tensor>> = active.iter().map(|&i| masks[i].clone()).collect();
        let low = decode_mixed(sam, &sub_emb, &sub_prompts, &sub_masks, classes)?.detach();
        // One mask prompt and one error map per sample: the classes' union.
        let low = low.max_keepdim(1)?;
        let up = bilinear(&low, s, s)?.gt(0.0)?.to_dtype(DType::U8)?;
        let up: Vec<Vec<u8>> = up.flatten_from(1)?.to_vec2()?;
        for (j, &i) in active.iter().enumerate() {
            let click = correction(&batch[i], &up[j], s, classes);
            prompts[i].points.push(click);
            masks[i] = Some(low.get(j)?.unsqueeze(0)?);
        }
    }
    Ok((prompts, masks))
}

/// The next click for one sample, from its predicted union (S x S) and its targets, within
/// the unpadded frame.
fn correction(p: &Prepared, pred: &[u8], s: usize, classes: usize) -> (f32, f32, i64) {
    let (nh, nw) = p.input_size;
    let mut predicted = vec![false; nh * nw];
    let mut target = vec![false; nh * nw];
    for y in 0..nh {
        for x in 0..nw {
            predicted[y * nw + x] = pred[y * s + x] != 0;
            target[y * nw + x] = (0..classes).any(|k| p.masks[(k * s + y) * s + x] > 0.5);
        }
    }
    next_click(&predicted, &target, nw, nh).unwrap_or((0.0, 0.0, -1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SamConfig;
    use crate::weights::{load_model, LoadOptions};
    use candle_core::Device;
    use std::path::Path;

    fn tiny() -> Sam {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let cfg = SamConfig::from_json_file(&dir.join("sam_tiny.json")).unwrap();
        let opts = LoadOptions {
            config: Some(&cfg),
            ..Default::default()
        };
        load_model(&dir.join("sam_tiny.safetensors"), &opts, &Device::Cpu)
            .unwrap()
            .sam
    }

    /// Grouped decoding gives each sample what decoding it alone gives.
    #[test]
    fn mixed_prompts_decode_as_if_alone() {
        let sam = tiny();
        let s = sam.config.img_size;
        let x = Tensor::randn(0f32, 1.0, (4, 3, s, s), &Device::Cpu).unwrap();
        let emb = sam.encode(&x).unwrap();
        let low = Tensor::randn(0f32, 1.0, (1, 1, s / 4, s / 4), &Device::Cpu).unwrap();
        let prompts = vec![
            UserPrompt {
                points: vec![(30.0, 40.0, 1)],
                bbox: None,
            },
            UserPrompt {
                points: vec![],
                bbox: Some([10.0, 12.0, 80.0, 90.0]),
            },
            UserPrompt {
                points: vec![(50.0, 60.0, 1)],
                bbox: Some([20.0, 22.0, 70.0, 99.0]),
            },
            UserPrompt {
                points: vec![(30.0, 40.0, 1), (5.0, 6.0, 0)],
                bbox: None,
            },
        ];
        let masks = vec![None, None, None, Some(low)];
        let all = decode_mixed(&sam, &emb, &prompts, &masks, 1).unwrap();
        for i in 0..4 {
            let alone = decode_mixed(
                &sam,
                &emb.narrow(0, i, 1).unwrap(),
                &prompts[i..=i],
                &masks[i..=i],
                1,
            )
            .unwrap();
            let diff = (all.narrow(0, i, 1).unwrap() - alone)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "sample {i}: {diff}");
        }
    }
}
