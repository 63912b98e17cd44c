//! Reading one case from disk, with the checks that stop a run before it starts.

use super::layout::Item;
use crate::io::image::{load_gray, load_rgb};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use rayon::prelude::*;

/// An image with one binary mask per class, at the image's own size.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub image: RgbImage,
    /// Per class, row-major, width x height.
    pub masks: Vec<Vec<bool>>,
}

impl Sample {
    pub fn size(&self) -> (usize, usize) {
        (self.image.height() as usize, self.image.width() as usize)
    }
}

/// Loads an item; several raters' masks become their per-pixel majority.
pub fn load_item(item: &Item) -> Result<Sample> {
    let image = load_rgb(&item.image)?;
    let (w, h) = image.dimensions();
    let mut masks = Vec::with_capacity(item.masks.len());
    for raters in &item.masks {
        if raters.is_empty() {
            bail!("{}: image {} has no mask", item.id, item.image.display());
        }
        let mut votes = vec![0u32; (w * h) as usize];
        for path in raters {
            let m = load_gray(path)
                .with_context(|| format!("{}: cannot read mask {}", item.id, path.display()))?;
            if m.dimensions() != (w, h) {
                bail!(
                    "{}: mask {} is {}x{}, the image is {w}x{h}",
                    item.id,
                    path.display(),
                    m.width(),
                    m.height()
                );
            }
            for (v, p) in votes.iter_mut().zip(m.as_raw()) {
                *v += (*p > 0) as u32;
            }
        }
        let n = raters.len() as u32;
        masks.push(votes.into_iter().map(|v| 2 * v > n).collect::<Vec<bool>>());
    }
    if masks.iter().all(|m| !m.iter().any(|&x| x)) {
        bail!("{}: the mask is empty", item.id);
    }
    Ok(Sample {
        id: item.id.clone(),
        image,
        masks,
    })
}

/// Loads every item once (in parallel): the good ones, and each bad one with its reason.
pub fn check_items(items: &[Item]) -> (Vec<Item>, Vec<(String, String)>) {
    let results: Vec<(Item, Result<()>)> = items
        .par_iter()
        .map(|it| (it.clone(), load_item(it).map(|_| ())))
        .collect();
    let mut good = vec![];
    let mut bad = vec![];
    for (item, r) in results {
        match r {
            Ok(()) => good.push(item),
            Err(e) => bad.push((item.id.clone(), format!("{e:#}"))),
        }
    }
    (good, bad)
}
