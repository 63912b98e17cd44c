//! Data-parallel training: ranks that each compute gradients on their shard of every
//! global batch, then average them, weighted by the samples each rank had, before the same
//! Adam update on every rank.
//!
//! `Communicator` is what a rank needs from the others. `Single` is one rank alone;
//! `ThreadGroup` joins ranks that are threads of one process (the CPU path, and the test of
//! equivalence with a single rank at the global batch size).

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Gradients are sent in buckets of at most this many values.
pub const BUCKET_VALUES: usize = 8 << 20;

pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Element-wise sums of `values` over all ranks; every rank passes the same length and
    /// gets the same sums, added in rank order.
    fn all_reduce_sum(&self, values: Vec<f32>) -> Result<Vec<f32>>;
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
    fn all_reduce_sum(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        Ok(values)
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

    fn all_reduce_sum(&self, values: Vec<f32>) -> Result<Vec<f32>> {
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
                if slot.len() != n {
                    bail!(
                        "rank {r} sent {} values, rank {} sent {n}",
                        slot.len(),
                        self.rank
                    );
                }
                for (s, v) in sums.iter_mut().zip(slot) {
                    *s += v;
                }
            }
            sums
        };
        // No rank may overwrite its slot before every rank has read all of them.
        self.shared.wait()?;
        Ok(sums)
    }

    fn abort(&self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.stopped = true;
        }
        self.shared.turned.notify_all();
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
    let head = comm.all_reduce_sum(head)?;
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
    let mut bucket: Vec<(&Var, usize)> = vec![];
    let mut values: Vec<f32> = vec![];
    let flush = |bucket: &mut Vec<(&Var, usize)>, values: &mut Vec<f32>, out: &mut GradStore| {
        let sums = comm.all_reduce_sum(std::mem::take(values))?;
        let mut at = 0;
        for (var, n) in bucket.drain(..) {
            let part = sums
                .get(at..at + n)
                .context("the all-reduce returned too few values")?;
            at += n;
            let g = Tensor::from_slice(part, var.shape(), var.device())?;
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
            Some(g) => (g.to_dtype(candle_core::DType::F32)? * weight as f64)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            None => vec![0f32; n],
        };
        if !values.is_empty() && values.len() + n > BUCKET_VALUES {
            flush(&mut bucket, &mut values, &mut out)?;
        }
        values.extend(g);
        bucket.push((var, n));
    }
    if !bucket.is_empty() {
        flush(&mut bucket, &mut values, &mut out)?;
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
