//! Batches for an epoch, made on worker threads while the model computes.

use crate::data::chunks::{
    chunks_per_case, draw_start, prepare_chunk, ChunkSpec, PreparedChunk, VolumeItem,
};
use crate::data::decathlon::load_case;
use crate::data::layout::Item;
use crate::data::prompts::PromptKind;
use crate::data::sample::load_item;
use crate::data::synthetic::SplitMix;
use crate::data::transform::{augment, prepare, Prepared};
use crate::model::SamConfig;
use anyhow::{Context, Result};
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};

/// Seeded per (seed, epoch): the same epoch sees the same order and the same augmentation
/// whether or not the run was interrupted before it.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// Everything a worker needs to make batches.
#[derive(Clone)]
pub struct BatchSpec {
    pub items: Vec<Item>,
    pub cfg: SamConfig,
    pub batch_size: usize,
    pub prompt: PromptKind,
    /// At most this many corrective clicks per sample, drawn uniformly from 0..=N.
    pub corrective_clicks: usize,
    pub augment: bool,
    pub seed: u64,
    pub workers: usize,
    /// Data-parallel rank and world: each global batch holds `batch_size * world` items, and
    /// this rank makes its `batch_size` of them.
    pub rank: usize,
    pub world: usize,
}

fn make(spec: &BatchSpec, epoch: usize, index: usize) -> Result<Option<Prepared>> {
    let item = &spec.items[index];
    let sample = load_item(item)?;
    let mut rng = SplitMix(
        spec.seed ^ ((epoch as u64) << 32) ^ (index as u64).wrapping_mul(0xD134_2543_DE82_EF95),
    );
    let sample = if spec.augment {
        augment(&sample, &mut rng)
    } else {
        sample
    };
    let mut prepared = prepare(&sample, &spec.cfg, spec.prompt, &mut rng);
    if let Some(p) = prepared.as_mut().filter(|_| spec.corrective_clicks > 0) {
        p.corrections = rng.below(spec.corrective_clicks + 1);
    }
    Ok(prepared)
}

/// This rank's batches of one epoch (one per global batch, possibly empty at the end),
/// prefetched two ahead on a thread pool of `workers` threads.
pub fn epoch_batches(spec: BatchSpec, epoch: usize) -> Result<Receiver<Result<Vec<Prepared>>>> {
    let (tx, rx) = sync_channel(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(spec.workers.max(1))
        .build()?;
    std::thread::spawn(move || {
        let order = epoch_order(spec.items.len(), spec.seed, epoch);
        let per_rank = spec.batch_size.max(1);
        for global in order.chunks(per_rank * spec.world.max(1)) {
            let chunk = super::parallel::shard(global, spec.rank, per_rank);
            let made: Result<Vec<Option<Prepared>>> =
                pool.install(|| chunk.par_iter().map(|&i| make(&spec, epoch, i)).collect());
            let batch = made.map(|v| v.into_iter().flatten().collect::<Vec<_>>());
            if tx.send(batch).is_err() {
                return; // the trainer stopped listening
            }
        }
    });
    Ok(rx)
}

/// The chunks of one epoch: cases in a seeded order, `chunks_per_case` chunks each, made on
/// a pool of `workers` threads while the model computes, at most two waiting.
pub fn epoch_chunks(
    spec: ChunkSpec,
    items: Vec<VolumeItem>,
    epoch: usize,
    workers: usize,
) -> Result<Receiver<Result<PreparedChunk>>> {
    let (tx, rx) = sync_channel(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers.max(1))
        .build()?;
    std::thread::spawn(move || {
        let order = epoch_order(items.len(), spec.seed, epoch);
        for i in order {
            let item = &items[i];
            let loaded = load_case(&item.case).with_context(|| format!("case {}", item.case.id));
            let (image, label) = match loaded {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let classes = spec.labels.apply(&label.volume.data);
            for j in 0..chunks_per_case(item, spec.chunk, spec.chunks_per_case) {
                let mut rng = SplitMix(
                    spec.seed
                        ^ ((epoch as u64) << 40)
                        ^ ((i as u64) << 16)
                        ^ (j as u64).wrapping_mul(0xD134_2543_DE82_EF95),
                );
                let start = draw_start(item, spec.chunk, spec.target_bias, &mut rng);
                let chunk = pool.install(|| {
                    prepare_chunk(
                        &item.case.id,
                        &image.volume,
                        &classes,
                        start,
                        &spec,
                        &mut rng,
                    )
                });
                if tx.send(chunk).is_err() {
                    return; // the trainer stopped listening
                }
            }
        }
    });
    Ok(rx)
}
