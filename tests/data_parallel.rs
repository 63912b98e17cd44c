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
    c.model_config = Some(fixture("sam_tiny.json"));
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

fn cli_run(data: &Path, out: &Path, batch: usize, gpus: usize) -> std::process::Command {
    cli_run_for(data, out, batch, gpus, 2)
}

fn cli_run_for(
    data: &Path,
    out: &Path,
    batch: usize,
    gpus: usize,
    epochs: usize,
) -> std::process::Command {
    let mut cmd = common::tiny_train_cmd(data, out);
    cmd.args(["--dataset", "folder", "--lr", "3e-3", "--seed", "11"])
        .args(["--epochs", &epochs.to_string()])
        .args([
            "--batch-size",
            &batch.to_string(),
            "--gpus",
            &gpus.to_string(),
        ]);
    cmd
}

/// `--gpus 2` on a CPU build: two processes that meet over TCP train like one at batch 4,
/// and only rank 0 reports.
#[test]
fn two_rank_processes_at_batch_2_train_like_one_at_batch_4() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 14, (64, 48), 3).unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let single = cli_run(&data, &one, 4, 1).output().unwrap();
    assert!(single.status.success(), "{single:?}");
    let ranks = cli_run(&data, &two, 2, 2).output().unwrap();
    assert!(ranks.status.success(), "{ranks:?}");
    let stdout = String::from_utf8_lossy(&ranks.stdout);
    assert_eq!(stdout.matches("run folder:").count(), 1, "{stdout}");
    let (a, b) = (adapters(&one), adapters(&two));
    assert_eq!(a.len(), b.len());
    for (k, ta) in &a {
        let d = max_abs_diff(ta, &b[k]);
        assert!(d < 1e-5, "{k}: the two runs differ by {d}");
    }
    let log = std::fs::read_to_string(two.join("log.jsonl")).unwrap();
    assert!(log.contains("\"ranks\":2"), "{log}");
}

/// A rank process killed mid-run stops the whole run: the launcher stops the other ranks
/// and fails, naming the rank, instead of waiting for it.
#[test]
fn a_killed_rank_process_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    msa::data::synthetic::write_folder_dataset(&data, 14, (64, 48), 3).unwrap();
    let out = dir.path().join("run");
    let mut cmd = cli_run_for(&data, &out, 2, 2, 200);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut launcher = cmd.spawn().unwrap();
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(out.join("log.jsonl")).is_ok_and(|l| l.contains("\"epoch\"")) {
        assert!(
            start.elapsed().as_secs() < 120,
            "no epoch finished in two minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let rank1 = children(launcher.id())
        .into_iter()
        .find(|&pid| environ(pid).contains("MSA_RANK=1"))
        .expect("rank 1 is a child of the launcher");
    // SAFETY: kill(2) on a pid this test found among its own grandchildren.
    unsafe { libc::kill(rank1 as i32, libc::SIGKILL) };
    let status = wait_timeout(&mut launcher, 60).expect("the launcher still runs a minute later");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(launcher.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("rank 1 stopped") || err.contains("rank 1"),
        "{err}"
    );
    assert!(
        children(launcher.id()).is_empty(),
        "ranks outlived the launcher"
    );
}

fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn environ(pid: u32) -> String {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\0', "\n")
}

fn wait_timeout(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < secs {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}
