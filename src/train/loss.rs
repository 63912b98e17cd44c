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
