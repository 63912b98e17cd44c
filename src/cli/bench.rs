//! `msa bench`: timings on random weights, for BENCHMARKS.md.

use crate::model::{Prompts, Sam, SamConfig};
use crate::weights::{Params, Source};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::time::Instant;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The image encoder on one image.
    Encoder,
    /// Prompt encoder + mask decoder, one click, per prompt (as `Predictor` answers one,
    /// and without the per-image context).
    Decoder,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    pub part: Part,
    #[arg(long, default_value = "vit_b")]
    pub preset: String,
    /// Custom architecture instead of a preset.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let device = super::default_device()?;
    let mut cfg = match &args.config {
        Some(path) => SamConfig::from_json_file(path)?,
        None => SamConfig::preset(&args.preset)?,
    };
    cfg.img_size = args.size;
    cfg.validate()?;
    let params = Params::new(Source::Random { std: 0.02 }, &device);
    let sam = Sam::load(&params, &cfg)?;
    let times = match args.part {
        Part::Encoder => time_encoder(&sam, args.runs, &device)?,
        Part::Decoder => time_decoder(&sam, args.runs, &device, true)?,
    };
    let uncached = match args.part {
        Part::Decoder => Some(time_decoder(&sam, args.runs, &device, false)?),
        Part::Encoder => None,
    };
    report(args, &cfg, &times, uncached.as_deref(), &device)
}

fn sync(device: &Device) -> Result<()> {
    device.synchronize()?;
    Ok(())
}

fn time_runs(runs: usize, device: &Device, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?; // warm-up: allocations, kernel caches
    sync(device)?;
    (0..runs.max(1))
        .map(|_| {
            let t0 = Instant::now();
            f()?;
            sync(device)?;
            Ok(t0.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

fn time_encoder(sam: &Sam, runs: usize, device: &Device) -> Result<Vec<f64>> {
    let s = sam.config.img_size;
    let x = Tensor::randn(0f32, 1f32, (1, 3, s, s), device)?;
    time_runs(runs, device, || {
        sam.encode(&x)?;
        Ok(())
    })
}

fn time_decoder(sam: &Sam, runs: usize, device: &Device, cached: bool) -> Result<Vec<f64>> {
    let g = sam.config.grid();
    let d = sam.config.prompt_embed_dim;
    let emb = Tensor::randn(0f32, 1f32, (1, d, g, g), device)?;
    let s = sam.config.img_size as f32;
    let prompts = Prompts {
        points: Some((
            Tensor::new(&[[[s * 0.4, s * 0.6]]], device)?,
            Tensor::ones((1, 1), DType::F32, device)?,
        )),
        ..Default::default()
    };
    if !cached {
        return time_runs(runs, device, || {
            sam.decode(&emb, &prompts)?.low_res_logits.sum_all()?;
            Ok(())
        });
    }
    // As `Predictor` answers a prompt: the image's decoder context is made once, with the
    // embedding, and each prompt pays the rest.
    let ctx = sam.decoder_context(&emb)?;
    time_runs(runs, device, || {
        sam.decode_cached(&emb, &ctx, &prompts)?
            .low_res_logits
            .sum_all()?;
        Ok(())
    })
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Median, min and mean of a non-empty list of timings.
fn stats(times: &[f64]) -> (f64, f64, f64) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    (sorted[sorted.len() / 2], sorted[0], mean)
}

fn report(
    args: &BenchArgs,
    cfg: &SamConfig,
    times: &[f64],
    uncached: Option<&[f64]>,
    device: &Device,
) -> Result<()> {
    let (median, min, mean) = stats(times);
    let uncached = uncached.map(stats);
    let part = match args.part {
        Part::Encoder => "encoder",
        Part::Decoder => "decoder_per_prompt",
    };
    let device_name = if device.is_cuda() { "cuda" } else { "cpu" };
    if args.json {
        let v = json!({
            "part": part,
            "preset": cfg.preset_name().unwrap_or("custom"),
            "size": cfg.img_size,
            "runs": times.len(),
            "median_ms": median,
            "min_ms": min,
            "mean_ms": mean,
            "peak_rss_mib": peak_rss_mib(),
            "device": device_name,
            "threads": rayon::current_num_threads(),
            "uncached_median_ms": uncached.map(|u| u.0),
            "uncached_min_ms": uncached.map(|u| u.1),
        });
        println!("{v}");
    } else {
        println!(
            "{part} {} {}px on {device_name}: median {median:.1} ms, min {min:.1} ms over {} runs; peak RSS {:.0} MiB",
            cfg.preset_name().unwrap_or("custom"),
            cfg.img_size,
            times.len(),
            peak_rss_mib().unwrap_or(f64::NAN)
        );
        if let Some((m, mn, _)) = uncached {
            println!("  without the per-image decoder context: median {m:.1} ms, min {mn:.1} ms");
        }
    }
    Ok(())
}
