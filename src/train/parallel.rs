//! Data-parallel training: ranks that each compute gradients on their shard of every
//! global batch, then average them, weighted by the samples each rank had, before the same
//! Adam update on every rank.
//!
//! `Communicator` is what a rank needs from the others. `Single` is one rank alone;
//! `ThreadGroup` joins ranks that are threads of one process (the CPU path, and the test of
//! equivalence with a single rank at the global batch size).

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Gradients are sent in buckets of at most this many values.
pub const BUCKET_VALUES: usize = 8 << 20;

pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Element-wise sums of the 1-D f32 tensor `values` over all ranks, on its device; every
    /// rank passes the same length and gets the same sums.
    fn all_reduce_sum(&self, values: &Tensor) -> Result<Tensor>;
    /// Tells the other ranks that this one stopped, so that none waits for it forever.
    fn abort(&self) {}
}

/// One rank alone.
pub struct Single;

impl Communicator for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, values: &Tensor) -> Result<Tensor> {
        Ok(values.clone())
    }
}

struct Shared {
    state: Mutex<State>,
    turned: Condvar,
}

struct State {
    slots: Vec<Vec<f32>>,
    arrived: usize,
    generation: u64,
    stopped: bool,
}

/// Ranks that are threads of one process.
pub struct ThreadGroup {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// The `world` members of a new group, rank 0 first.
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                slots: vec![vec![]; world],
                arrived: 0,
                generation: 0,
                stopped: false,
            }),
            turned: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadGroup {
                rank,
                world,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl Communicator for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, values: &Tensor) -> Result<Tensor> {
        on_host(values, |v| self.sum_slots(v))
    }

    fn abort(&self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.stopped = true;
        }
        self.shared.turned.notify_all();
    }
}

/// An all-reduce done on host values: `values` copied out, `reduce`d, and copied back to
/// its device.
pub fn on_host(
    values: &Tensor,
    reduce: impl FnOnce(Vec<f32>) -> Result<Vec<f32>>,
) -> Result<Tensor> {
    let host = values.flatten_all()?.to_vec1::<f32>()?;
    let n = host.len();
    let sums = reduce(host)?;
    if sums.len() != n {
        bail!("the all-reduce returned {} values for {n}", sums.len());
    }
    Ok(Tensor::from_vec(sums, n, values.device())?)
}

/// Adds `other` into `sums` (equal lengths checked), for reductions in rank order.
pub fn add_into(sums: &mut [f32], other: &[f32], rank: usize) -> Result<()> {
    if other.len() != sums.len() {
        bail!(
            "rank {rank} sent {} values, expected {}",
            other.len(),
            sums.len()
        );
    }
    for (s, v) in sums.iter_mut().zip(other) {
        *s += v;
    }
    Ok(())
}

impl ThreadGroup {
    fn sum_slots(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        let n = values.len();
        {
            let mut state = self.shared.lock()?;
            let world = state.slots.len();
            let Some(slot) = state.slots.get_mut(self.rank) else {
                bail!("rank {} outside a group of {world}", self.rank);
            };
            *slot = values;
        }
        self.shared.wait()?;
        let sums = {
            let state = self.shared.lock()?;
            let mut sums = vec![0f32; n];
            for (r, slot) in state.slots.iter().enumerate() {
                add_into(&mut sums, slot, r)?;
            }
            sums
        };
        // No rank may overwrite its slot before every rank has read all of them.
        self.shared.wait()?;
        Ok(sums)
    }
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| anyhow::anyhow!("another rank panicked during an all-reduce"))
    }

    /// A barrier that a stopped rank breaks: the others get an error instead of waiting.
    fn wait(&self) -> Result<()> {
        let mut state = self.lock()?;
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == state.slots.len() {
            state.arrived = 0;
            state.generation += 1;
            self.turned.notify_all();
        }
        while state.generation == generation && !state.stopped {
            state = self
                .turned
                .wait(state)
                .map_err(|_| anyhow::anyhow!("another rank panicked during an all-reduce"))?;
        }
        if state.generation == generation {
            bail!("another rank stopped; this one stops too");
        }
        Ok(())
    }
}

/// The gradients of every trainable var averaged over all ranks' samples, and the mean
/// loss. `local` is this rank's backward pass with its mean loss over `samples` samples
/// (None when its shard of the batch was empty: it still takes part). Vars without a
/// gradient anywhere get none. With one rank the gradients are returned untouched.
pub fn average(
    comm: &dyn Communicator,
    vars: &BTreeMap<String, Var>,
    local: Option<(GradStore, f64)>,
    samples: usize,
) -> Result<Option<(GradStore, f64)>> {
    if comm.world() == 1 {
        return Ok(local);
    }
    let weight = samples as f32;
    let (grads, loss) = match &local {
        Some((g, l)) => (Some(g), *l),
        None => (None, 0.0),
    };
    // Sample count, loss sum, and for each var whether this rank has its gradient.
    let mut head = vec![weight, (loss * samples as f64) as f32];
    head.extend(vars.values().map(|v| {
        let has = grads.is_some_and(|g| g.get(v.as_tensor()).is_some());
        has as u8 as f32
    }));
    let n_head = head.len();
    let device = match vars.values().next() {
        Some(v) => v.device().clone(),
        None => candle_core::Device::Cpu,
    };
    let head = comm
        .all_reduce_sum(&Tensor::from_vec(head, n_head, &device)?)?
        .to_vec1::<f32>()?;
    let (Some(&total), Some(&loss_sum)) = (head.first(), head.get(1)) else {
        bail!(
            "the all-reduce of sample counts returned {} values",
            head.len()
        );
    };
    if total <= 0.0 {
        return Ok(None);
    }
    let present = head.get(2..).unwrap_or_default();
    let mut out = GradStore::default();
    let mut bucket: Vec<(&Var, Tensor)> = vec![];
    let mut filled = 0usize;
    let flush = |bucket: &mut Vec<(&Var, Tensor)>, out: &mut GradStore| {
        let parts: Vec<Tensor> = bucket.iter().map(|(_, g)| g.clone()).collect();
        let sums = comm.all_reduce_sum(&Tensor::cat(&parts, 0)?)?;
        let mut at = 0;
        for (var, _) in bucket.drain(..) {
            let n = var.elem_count();
            let g = sums.narrow(0, at, n)?.reshape(var.shape())?;
            at += n;
            out.insert(var.as_tensor(), (g / total as f64)?);
        }
        anyhow::Ok(())
    };
    for (var, &p) in vars.values().zip(present) {
        if p == 0.0 {
            continue; // no rank has a gradient for it, as with one rank
        }
        let n = var.elem_count();
        let g = match grads.and_then(|g| g.get(var.as_tensor())) {
            Some(g) => (g.to_dtype(candle_core::DType::F32)? * weight as f64)?.flatten_all()?,
            None => Tensor::zeros(n, candle_core::DType::F32, var.device())?,
        };
        if filled > 0 && filled + n > BUCKET_VALUES {
            flush(&mut bucket, &mut out)?;
            filled = 0;
        }
        filled += n;
        bucket.push((var, g));
    }
    if !bucket.is_empty() {
        flush(&mut bucket, &mut out)?;
    }
    Ok(Some((out, loss_sum as f64 / total as f64)))
}

/// This rank's part of a global batch of `items`: `per_rank` items from `rank * per_rank`,
/// fewer or none at the end of an epoch.
pub fn shard<T>(items: &[T], rank: usize, per_rank: usize) -> &[T] {
    let start = (rank * per_rank).min(items.len());
    let end = (start + per_rank).min(items.len());
    items.get(start..end).unwrap_or_default()
}
