//! Dynamic loss scaling for an f16 encoder. Adapter gradients of 1e-5 and less, which are
//! common, fall below f16's smallest normal value (6.1e-5) on their way back through the
//! encoder and lose their digits. The loss is multiplied by a large scale before the
//! backward pass and the gradients divided by it after. When a gradient overflows, the
//! step is skipped and the scale halved; after `GROWTH_STEPS` good steps it doubles. bf16
//! has f32's range and needs none of this.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::cell::Cell;
use std::collections::BTreeMap;

const INITIAL: f64 = 65536.0;
const GROWTH_STEPS: usize = 2000;

pub struct LossScale {
    scale: Cell<f64>,
    good_steps: Cell<usize>,
}

/// Where the scale stands, kept in the run state so that a resumed run goes on from it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaleState {
    pub scale: f64,
    pub good_steps: usize,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: Cell::new(INITIAL),
            good_steps: Cell::new(0),
        }
    }
}

impl LossScale {
    pub fn scale(&self) -> f64 {
        self.scale.get()
    }

    pub fn state(&self) -> LossScaleState {
        LossScaleState {
            scale: self.scale.get(),
            good_steps: self.good_steps.get(),
        }
    }

    pub fn restore(&self, s: LossScaleState) {
        self.scale.set(s.scale);
        self.good_steps.set(s.good_steps);
    }

    /// The gradients of `vars` divided by the scale, or None when one is not finite (the
    /// step is to be skipped; the scale is halved).
    pub fn unscale(
        &self,
        grads: GradStore,
        vars: &BTreeMap<String, Var>,
    ) -> Result<Option<GradStore>> {
        let scale = self.scale.get();
        let present: Vec<(&Var, &Tensor)> = vars
            .values()
            .filter_map(|v| Some((v, grads.get(v.as_tensor())?)))
            .collect();
        // One sum over every gradient, read once: an inf or NaN anywhere makes it
        // non-finite, and a GPU is waited for once per step rather than once per tensor.
        let mut total: Option<Tensor> = None;
        for (_, g) in &present {
            let sum = g.abs()?.sum_all()?.to_dtype(DType::F32)?;
            total = Some(match total {
                Some(t) => (t + sum)?,
                None => sum,
            });
        }
        if let Some(total) = total {
            if !total.to_scalar::<f32>()?.is_finite() {
                self.scale.set((scale / 2.0).max(1.0));
                self.good_steps.set(0);
                tracing::warn!(
                    "f16 gradients overflowed: step skipped, loss scale {}",
                    scale / 2.0
                );
                return Ok(None);
            }
        }
        let mut out = GradStore::default();
        for (var, g) in present {
            out.insert(var.as_tensor(), (g / scale)?);
        }
        let good = self.good_steps.get() + 1;
        if good >= GROWTH_STEPS {
            self.scale.set(scale * 2.0);
            self.good_steps.set(0);
        } else {
            self.good_steps.set(good);
        }
        Ok(Some(out))
    }
}
