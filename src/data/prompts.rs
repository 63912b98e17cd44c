//! Prompts drawn from a ground-truth mask for training and evaluation (MSA-SPEC 3.1).
//! Inference never comes here: users give their own clicks and boxes.

use super::synthetic::SplitMix;
use crate::io::prompt::UserPrompt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PromptKind {
    /// One foreground click.
    Click,
    /// The target's bounding box, jittered.
    Box,
    /// A click and a box.
    Both,
    /// A click, a box, or both, a third of the time each (MSA-SPEC 3.1a); training draws
    /// one kind per batch, since a batch's prompts go through the model as one tensor.
    Mixed,
}

impl PromptKind {
    /// A click, a box or both for `Mixed` (drawn), the kind itself otherwise.
    pub fn draw(self, rng: &mut SplitMix) -> PromptKind {
        match self {
            PromptKind::Mixed => match rng.below(3) {
                0 => PromptKind::Click,
                1 => PromptKind::Box,
                _ => PromptKind::Both,
            },
            kind => kind,
        }
    }
}

/// A uniformly drawn foreground pixel as (x, y): column, then row.
pub fn click(mask: &[bool], width: usize, rng: &mut SplitMix) -> Option<(f32, f32)> {
    let n = mask.iter().filter(|&&m| m).count();
    if n == 0 {
        return None;
    }
    let k = rng.below(n);
    let i = mask.iter().enumerate().filter(|(_, &m)| m).nth(k)?.0;
    Some(((i % width) as f32, (i / width) as f32))
}

/// The tight box (x0, y0, x1, y1) of the mask.
pub fn tight_box(mask: &[bool], width: usize) -> Option<[f32; 4]> {
    let mut b: Option<[usize; 4]> = None;
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let (x, y) = (i % width, i / width);
        b = Some(match b {
            None => [x, y, x, y],
            Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
        });
    }
    b.map(|v| v.map(|c| c as f32))
}

/// The tight box with each side moved by up to 10% of the box size (at most 20 px),
/// kept inside the image.
pub fn jittered_box(
    mask: &[bool],
    width: usize,
    height: usize,
    rng: &mut SplitMix,
) -> Option<[f32; 4]> {
    let [x0, y0, x1, y1] = tight_box(mask, width)?;
    let jx = (0.1 * (x1 - x0 + 1.0)).min(20.0);
    let jy = (0.1 * (y1 - y0 + 1.0)).min(20.0);
    let mut j = |v: f32, r: f32| v + ((rng.uniform() * 2.0 - 1.0) as f32) * r;
    let (mx, my) = ((width - 1) as f32, (height - 1) as f32);
    let nx0 = j(x0, jx).clamp(0.0, mx);
    let ny0 = j(y0, jy).clamp(0.0, my);
    let nx1 = j(x1, jx).clamp(0.0, mx);
    let ny1 = j(y1, jy).clamp(0.0, my);
    Some([nx0.min(nx1), ny0.min(ny1), nx0.max(nx1), ny0.max(ny1)])
}

/// A prompt of `kind` for `mask`; None when the mask is empty.
pub fn from_mask(
    mask: &[bool],
    width: usize,
    height: usize,
    kind: PromptKind,
    rng: &mut SplitMix,
) -> Option<UserPrompt> {
    let kind = kind.draw(rng);
    let points = match kind {
        PromptKind::Box => vec![],
        _ => {
            let (x, y) = click(mask, width, rng)?;
            vec![(x, y, 1)]
        }
    };
    let bbox = match kind {
        PromptKind::Click => None,
        _ => Some(jittered_box(mask, width, height, rng)?),
    };
    Some(UserPrompt { points, bbox })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn click_is_x_then_y() {
        let (w, h) = (10, 5);
        let mut mask = vec![false; w * h];
        mask[2 * w + 7] = true; // row 2, column 7
        let mut rng = SplitMix(1);
        assert_eq!(click(&mask, w, &mut rng), Some((7.0, 2.0)));
        assert_eq!(tight_box(&mask, w), Some([7.0, 2.0, 7.0, 2.0]));
    }

    #[test]
    fn jittered_box_stays_near_the_tight_box_and_is_seeded() {
        let (w, h) = (100, 80);
        let mask: Vec<bool> = (0..w * h)
            .map(|i| (20..60).contains(&(i % w)) && (10..30).contains(&(i / w)))
            .collect();
        let b1 = jittered_box(&mask, w, h, &mut SplitMix(3)).unwrap();
        let b2 = jittered_box(&mask, w, h, &mut SplitMix(3)).unwrap();
        assert_eq!(b1, b2);
        let tight = [20.0, 10.0, 59.0, 29.0];
        for (a, t) in b1.iter().zip(tight) {
            assert!((a - t).abs() <= 4.0 + 1e-4, "{b1:?} vs {tight:?}");
        }
        assert!(from_mask(
            &vec![false; w * h],
            w,
            h,
            PromptKind::Both,
            &mut SplitMix(0)
        )
        .is_none());
    }
}
