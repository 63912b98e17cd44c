//! Adam (PyTorch semantics, no weight decay) over the trainable tensors, and StepLR.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;

pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub step: usize,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
}

impl Default for Adam {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }
}

impl Adam {
    /// One update of every var that has a gradient.
    pub fn step(&mut self, vars: &BTreeMap<String, Var>, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (key, var) in vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = match self.m.get(key) {
                Some(m) => ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
                None => (g * (1.0 - self.beta1))?,
            };
            let v = match self.v.get(key) {
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                None => (g.sqr()? * (1.0 - self.beta2))?,
            };
            let denom = ((v.sqrt()? / bc2.sqrt())? + self.eps)?;
            let update = ((&m / denom)? * (lr / bc1))?;
            var.set(&(var.as_tensor() - update)?)?;
            self.m.insert(key.clone(), m);
            self.v.insert(key.clone(), v);
        }
        Ok(())
    }
}

/// lr * gamma^(epoch / step_size), epochs counted from 0.
pub fn step_lr(base: f64, epoch: usize, step_size: usize, gamma: f64) -> f64 {
    base * gamma.powi((epoch / step_size.max(1)) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps on f(x) = sum(x^2) against PyTorch's Adam arithmetic written out.
    #[test]
    fn adam_matches_the_pytorch_update() {
        let x = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let vars = BTreeMap::from([("x".to_string(), x.clone())]);
        let mut adam = Adam::default();
        let (mut m, mut v, mut p) = ([0f64; 2], [0f64; 2], [1.0f64, -2.0]);
        for t in 1..=2 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            adam.step(&vars, &loss.backward().unwrap(), 0.1).unwrap();
            for i in 0..2 {
                let g = 2.0 * p[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                p[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
        }
        assert_eq!(step_lr(1e-4, 9, 10, 0.5), 1e-4);
        assert_eq!(step_lr(1e-4, 10, 10, 0.5), 5e-5);
    }
}
