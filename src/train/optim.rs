//! Adam (PyTorch semantics, no weight decay) over the trainable tensors, and StepLR.

use crate::kernels::adam;
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
            let p = var.as_tensor();
            if crate::model::nn::is_cpu_f32(p) {
                self.update_in_place(key, p, g, lr, bc1, bc2)?;
            } else {
                self.update_composed(key, var, g, lr, bc1, bc2)?;
            }
        }
        Ok(())
    }

    /// The CPU update: moments and parameter rewritten in place, three passes.
    fn update_in_place(
        &mut self,
        key: &str,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
        bc1: f64,
        bc2: f64,
    ) -> Result<()> {
        let g = g.contiguous()?;
        let m = moment(&mut self.m, key, &g)?;
        let v = moment(&mut self.v, key, &g)?;
        m.inplace_op2(
            &g,
            &adam::Moment {
                decay: self.beta1,
                square: false,
            },
        )?;
        v.inplace_op2(
            &g,
            &adam::Moment {
                decay: self.beta2,
                square: true,
            },
        )?;
        let apply = adam::Apply {
            inv_sqrt_bc2: 1.0 / bc2.sqrt(),
            eps: self.eps,
            lr_over_bc1: lr / bc1,
        };
        p.inplace_op3(&m, &v, &apply)?;
        Ok(())
    }

    /// The same arithmetic in candle's ops, for devices without the in-place kernels.
    fn update_composed(
        &mut self,
        key: &str,
        var: &Var,
        g: &Tensor,
        lr: f64,
        bc1: f64,
        bc2: f64,
    ) -> Result<()> {
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
        self.m.insert(key.to_string(), m);
        self.v.insert(key.to_string(), v);
        Ok(())
    }
}

/// The moment tensor of `key`, made contiguous and owned by the optimizer (zeros at the
/// first step), ready to be rewritten in place.
fn moment(moments: &mut BTreeMap<String, Tensor>, key: &str, g: &Tensor) -> Result<Tensor> {
    let m = match moments.remove(key) {
        Some(m) if m.shape() != g.shape() => anyhow::bail!(
            "optimizer state `{key}` has shape {:?}, its gradient {:?}",
            m.dims(),
            g.dims()
        ),
        Some(m) => m.contiguous()?,
        None => g.zeros_like()?,
    };
    moments.insert(key.to_string(), m.clone());
    Ok(m)
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

    /// The in-place CPU update and the composed one agree to the last bit, over steps
    /// whose gradients change sign and size.
    #[test]
    fn in_place_update_equals_the_composed_one() {
        let dev = Device::Cpu;
        let p0 = Tensor::randn(0f32, 1f32, (3, 40_000), &dev).unwrap();
        let (a, b) = (
            Var::from_tensor(&p0).unwrap(),
            Var::from_tensor(&p0).unwrap(),
        );
        let (mut in_place, mut composed) = (Adam::default(), Adam::default());
        for t in 1..=3 {
            let g = (Tensor::randn(0f32, 1f32, (3, 40_000), &dev).unwrap() * (t as f64)).unwrap();
            for adam in [&mut in_place, &mut composed] {
                adam.step += 1;
            }
            let bc1 = 1.0 - 0.9f64.powi(t);
            let bc2 = 1.0 - 0.999f64.powi(t);
            in_place
                .update_in_place("p", a.as_tensor(), &g, 1e-3, bc1, bc2)
                .unwrap();
            composed
                .update_composed("p", &b, &g, 1e-3, bc1, bc2)
                .unwrap();
        }
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(a.as_tensor()), flat(b.as_tensor()));
        assert_eq!(flat(&in_place.m["p"]), flat(&composed.m["p"]));
        assert_eq!(flat(&in_place.v["p"]), flat(&composed.v["p"]));
        assert_ne!(flat(a.as_tensor()), flat(&p0));
    }
}
