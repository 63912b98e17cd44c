//! Data-parallel training on the CPU path (ranks as threads, `train::parallel::ThreadGroup`):
//! two ranks at batch 2 must train like one rank at batch 4.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, max_abs_diff};
use msa::train::config::TrainConfig;
use std::collections::HashMap;
use std::path::Path;

fn config(data: &Path, out: &Path, batch: usize) -> TrainConfig {
    let mut c = TrainConfig::new(
        fixture("sam_tiny.safetensors"),
        data.to_path_buf(),
        out.to_path_buf(),
    );
    c.config = Some(fixture("sam_tiny.json"));
    c.epochs = 2;
    c.batch_size = batch;
    c.lr = 3e-3;
    c.seed = 11;
    c.samples = 0;
    c
}

fn adapters(out: &Path) -> HashMap<String, Tensor> {
    let path = out.join("adapters_last.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
}

#[test]
fn two_ranks_at_batch_2_train_like_one_rank_at_batch_4() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 11 training images after the validation split: the last global batch of each epoch
    // holds 3, so the ranks' shares are 2 and 1 and the average must weight them.
    msa::data::synthetic::write_folder_dataset(&data, 14, (64, 48), 3).unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let single = msa::train::run::run(&config(&data, &one, 4), &Device::Cpu, false).unwrap();
    let ranks =
        msa::train::run::run_threads(&config(&data, &two, 2), &Device::Cpu, false, 2).unwrap();

    let (a, b) = (adapters(&one), adapters(&two));
    assert_eq!(a.len(), b.len());
    let mut moved = 0f32;
    for (k, ta) in &a {
        let d = max_abs_diff(ta, &b[k]);
        assert!(d < 1e-5, "{k}: the two runs differ by {d}");
        moved = moved.max(ta.abs().unwrap().max_all().unwrap().to_scalar().unwrap());
    }
    assert!(moved > 1e-3, "training left the adapters at {moved}");
    for (x, y) in single.history.iter().zip(&ranks.history) {
        assert!(
            (x.train_loss - y.train_loss).abs() < 1e-5 * x.train_loss.abs().max(1.0),
            "epoch {}: loss {} against {}",
            x.epoch,
            x.train_loss,
            y.train_loss
        );
        assert_eq!(x.val_dice.is_some(), y.val_dice.is_some());
    }
}

/// A rank that stops (here rank 0, whose run folder cannot be made) must not leave the
/// others waiting in an all-reduce: the whole run returns the error.
#[test]
fn a_rank_that_fails_stops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 8, (64, 48), 3).unwrap();
    let blocked = dir.path().join("a_file");
    std::fs::write(&blocked, b"not a folder").unwrap();
    let cfg = config(&data, &blocked.join("run"), 2);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = msa::train::run::run_threads(&cfg, &Device::Cpu, false, 2);
        let _ = tx.send(r.map(|_| ()).map_err(|e| format!("{e:#}")));
    });
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the ranks still wait for each other after two minutes");
    let e = result.unwrap_err();
    assert!(e.contains("cannot create"), "{e}");
}
