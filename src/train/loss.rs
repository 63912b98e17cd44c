//! Training losses.

use candle_core::{Result, Tensor};

/// Mean binary cross-entropy on logits with a weight on positive targets, as PyTorch's
/// `BCEWithLogitsLoss(pos_weight=w)`:
/// (1 - y) x + (1 + (w - 1) y) (log(1 + e^-|x|) + max(-x, 0)).
pub fn bce_with_logits(logits: &Tensor, target: &Tensor, pos_weight: f64) -> Result<Tensor> {
    let softplus_neg = (logits.abs()?.neg()?.exp()? + 1.0)?
        .log()?
        .add(&logits.neg()?.relu()?)?;
    let weight = ((target * (pos_weight - 1.0))? + 1.0)?;
    let one_minus_y = (1.0 - target)?;
    let loss = (one_minus_y.mul(logits)? + weight.mul(&softplus_neg)?)?;
    loss.mean_all()
}

/// Soft Dice loss per class, averaged: 1 - (2 Σ p y + ε) / (Σ p + Σ y + ε), p = sigmoid(x).
/// logits and target are (B, K, H, W).
pub fn dice_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let eps = 1e-5;
    let p = candle_nn::ops::sigmoid(logits)?;
    let inter = (&p * target)?.sum((0, 2, 3))?;
    let denom = (p.sum((0, 2, 3))? + target.sum((0, 2, 3))?)?;
    let dice = ((inter * 2.0)? + eps)?.div(&(denom + eps)?)?;
    (1.0 - dice)?.mean_all()
}

/// Dice + cross-entropy with a sigmoid per class (MSA-SPEC 3.2, multi-class and 3D).
pub fn dice_ce(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    dice_loss(logits, target)? + bce_with_logits(logits, target, 1.0)?
}

/// DiceCE for outputs that each belong to one class (one prompt per class and slice):
/// logits and target (N, 1, H, W), `classes[i]` the class of row i. Dice is taken per
/// class over all of its rows, then averaged over the classes present; cross-entropy over
/// every pixel.
pub fn dice_ce_by_class(logits: &Tensor, target: &Tensor, classes: &[u8]) -> Result<Tensor> {
    let mut present: Vec<u8> = classes.to_vec();
    present.sort_unstable();
    present.dedup();
    let dev = logits.device();
    let mut dice_terms = Vec::with_capacity(present.len());
    for c in present {
        let rows: Vec<u32> = (0..classes.len() as u32)
            .filter(|&i| classes[i as usize] == c)
            .collect();
        let idx = Tensor::new(rows.as_slice(), dev)?;
        dice_terms.push(dice_loss(
            &logits.index_select(&idx, 0)?,
            &target.index_select(&idx, 0)?,
        )?);
    }
    let dice = Tensor::stack(&dice_terms, 0)?.mean_all()?;
    dice + bce_with_logits(logits, target, 1.0)?
}
