//! `msa bench`: timings on random weights, for BENCHMARKS.md.

use crate::model::precision::Precision;
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
    /// One training step (forward, backward, Adam) with encoder adapters, SAM frozen
    /// (`--full`: every weight trains; `--lora R`: LoRA on qkv instead of the adapters).
    TrainStep,
    /// Predict requests against one encoded image on a local `msa serve` (loopback),
    /// at each `--clients` count: requests/s, p50 and p95 latency.
    Serve,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    pub part: Part,
    #[arg(long, default_value = "vit_b")]
    pub preset: String,
    /// Custom architecture instead of a preset.
    #[arg(long = "model-config", alias = "config")]
    pub model_config: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Images per training step (train-step only).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Add the decoder adapters (train-step; the PyTorch reference has none).
    #[arg(long, conflicts_with = "full")]
    pub decoder_adapters: bool,
    /// Full fine-tuning instead of adapters (train-step): every SAM weight trains, as
    /// `msa train --train all`.
    #[arg(long)]
    pub full: bool,
    /// train-step: LoRA of this rank on every encoder block's qkv instead of the Space and
    /// MLP adapters (as `msa train --train lora`).
    #[arg(long, conflicts_with_all = ["full", "decoder_adapters"])]
    pub lora: Option<usize>,
    /// Slices per volume chunk: depth adapters in every block and the encoder's depth
    /// branch on (encoder: one chunk of D slices; train-step: --batch must be a multiple).
    #[arg(long)]
    pub depth: Option<usize>,
    /// train-step: recompute the encoder's blocks in the backward pass (as
    /// `msa train --checkpoint-blocks`).
    #[arg(long)]
    pub checkpoint_blocks: bool,
    /// The image encoder's dtype (encoder, train-step); default as `msa predict` (f32)
    /// and `msa train` (bf16 on GPUs, f32 on the CPU) have it.
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The model `serve` loads (a checkpoint or a named model).
    #[arg(long, default_value = "lite_medsam")]
    pub checkpoint: std::path::PathBuf,
    /// The image `serve` uploads; default: a generated 512x512 PNG.
    #[arg(long)]
    pub image: Option<std::path::PathBuf>,
    /// Concurrent clients for `serve`, one load run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub clients: Vec<usize>,
    /// Requests per load run (`serve`).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Time bound per load run in seconds (`serve`).
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.part == Part::Serve {
        return super::bench_serve::run(&super::bench_serve::ServeBench {
            checkpoint: &args.checkpoint,
            image: args.image.as_deref(),
            clients: &args.clients,
            requests: args.requests,
            max_seconds: args.max_seconds,
            json: args.json,
        });
    }
    let device = crate::runtime::device::default_device()?;
    let mut cfg = match &args.model_config {
        Some(path) => SamConfig::from_json_file(path)?,
        None => SamConfig::preset(&args.preset)?,
    };
    cfg.img_size = args.size;
    cfg.validate()?;
    if args.part == Part::TrainStep {
        let (times, counts) = time_train_step(&cfg, args, &device)?;
        let timings = Timings {
            times: &times,
            uncached: None,
            step: Some(counts),
        };
        return report(args, &cfg, &timings, &device);
    }
    let params = Params::new(Source::Random { std: 0.02 }, &device);
    let ad = match args.depth {
        Some(d) => depth_adapters(d, false),
        None => crate::model::AdapterConfig::none(),
    };
    let sam = Sam::load_with(&params, &cfg, &ad, &model_options(args, &device)?)?;
    let times = match args.part {
        Part::Encoder => time_encoder(&sam, args.runs, &device)?,
        Part::Decoder => time_decoder(&sam, args.runs, &device, true)?,
        Part::TrainStep | Part::Serve => unreachable!("handled above"),
    };
    let uncached = match args.part {
        Part::Decoder => Some(time_decoder(&sam, args.runs, &device, false)?),
        _ => None,
    };
    let timings = Timings {
        times: &times,
        uncached: uncached.as_deref(),
        step: None,
    };
    report(args, &cfg, &timings, &device)
}

/// `--precision`, else the default of the command the part stands for.
fn precision(args: &BenchArgs, device: &Device) -> Result<Precision> {
    let asked = match (args.precision, args.part) {
        (None, Part::TrainStep) => None,
        (asked, _) => Some(asked.unwrap_or(Precision::F32)),
    };
    Ok(Precision::resolve(asked, device)?)
}

/// The attention kernel the environment names, and the encoder in `precision`.
fn model_options(args: &BenchArgs, device: &Device) -> Result<crate::model::ModelOptions> {
    Ok(crate::model::ModelOptions {
        encoder_dtype: precision(args, device)?.dtype(),
        ..Default::default()
    })
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

/// Space, MLP and Depth adapters in every encoder block (PyTorch init, so that every
/// branch computes), for chunks of d slices.
fn depth_adapters(d: usize, decoder: bool) -> crate::model::AdapterConfig {
    crate::model::AdapterConfig {
        depth: true,
        depth_chunk: d,
        decoder,
        init: crate::model::AdapterInit::Torch,
        ..Default::default()
    }
}

/// One image, or with depth adapters one chunk of D slices.
fn time_encoder(sam: &Sam, runs: usize, device: &Device) -> Result<Vec<f64>> {
    let s = sam.config.img_size;
    let n = sam.depth_chunk().unwrap_or(1);
    let x = Tensor::randn(0f32, 1f32, (n, 3, s, s), device)?;
    time_runs(runs, device, || {
        match sam.depth_chunk() {
            Some(d) => sam.encode_chunks(&x, d)?,
            None => sam.encode(&x)?,
        };
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

/// What a training step holds besides its time.
#[derive(Clone, Copy)]
struct TrainStepCounts {
    /// Trainable parameters.
    trainable: usize,
    /// Tensors the last step created (`runtime::tensors_created`).
    tensors: usize,
}

/// Forward, BCE loss, backward and an Adam update on random weights and data, with the
/// encoder's Space and MLP adapters trainable (as the PyTorch reference step), with LoRA
/// in their place (`--lora R`), or with every weight trainable (`--full`).
fn time_train_step(
    cfg: &SamConfig,
    args: &BenchArgs,
    device: &Device,
) -> Result<(Vec<f64>, TrainStepCounts)> {
    use crate::model::{AdapterConfig, MaskSelection};
    let random = Source::Random { std: 0.02 };
    let (params, ad) = if args.full {
        (Params::train_all(random, device, 0), AdapterConfig::none())
    } else if let Some(d) = args.depth {
        if d == 0 || !args.batch.is_multiple_of(d) {
            anyhow::bail!(
                "--batch {} is not a whole number of --depth {d} chunks",
                args.batch
            );
        }
        let ad = depth_adapters(d, args.decoder_adapters);
        (Params::with_options(random, device, true, 0), ad)
    } else {
        let ad = AdapterConfig {
            decoder: args.decoder_adapters,
            init: crate::model::AdapterInit::Torch,
            ..AdapterConfig::default()
        };
        (Params::with_options(random, device, true, 0), ad)
    };
    // LoRA replaces the encoder's Space and MLP adapters, as `msa train --train lora` has it.
    let ad = match args.lora {
        Some(0) => anyhow::bail!("--lora 0: the LoRA rank must be at least 1"),
        Some(r) => AdapterConfig {
            encoder: false,
            lora_rank: r,
            ..ad
        },
        None => ad,
    };
    let sam = Sam::load_with(&params, cfg, &ad, &model_options(args, device)?)?;
    let vars = params.trainables();
    let (b, s) = (args.batch, cfg.img_size);
    let x = Tensor::randn(0f32, 1f32, (b, 3, s, s), device)?;
    let target = Tensor::rand(0f32, 1f32, (b, 1, s, s), device)?
        .gt(0.7)?
        .to_dtype(DType::F32)?;
    let prompts = Prompts {
        points: Some((
            (Tensor::ones((b, 1, 2), DType::F32, device)? * (s as f64 * 0.5))?,
            Tensor::ones((b, 1), DType::F32, device)?,
        )),
        ..Default::default()
    };
    let recompute = args
        .checkpoint_blocks
        .then(|| crate::model::recompute::Recompute::new(vars.values()));
    let mut adam = crate::train::optim::Adam::default();
    let mut tensors = 0;
    let times = time_runs(args.runs, device, || {
        let t0 = Instant::now();
        let first = crate::runtime::tensors_created();
        let emb = sam.encode_for_training(&x, args.depth, recompute.as_ref())?;
        let out = sam.decode(&emb, &prompts)?;
        let (low, _) = out.select(MaskSelection::Classes(1))?;
        let logits = crate::resize::bilinear(&low, s, s)?;
        let loss = crate::train::loss::bce_with_logits(&logits, &target, 2.0)?;
        let t1 = Instant::now();
        crate::runtime::memory::sample(device);
        crate::runtime::memory::trace(device, || "step: forward and loss".into());
        let mut g = loss.backward()?;
        crate::runtime::memory::sample(device);
        crate::runtime::memory::trace(device, || "step: backward".into());
        if let Some(r) = &recompute {
            r.merge_into(&mut g)?;
        }
        let t2 = Instant::now();
        adam.step(&vars, &g, 1e-4)?;
        tensors = crate::runtime::tensors_created() - first;
        tracing::debug!(
            forward_ms = (t1 - t0).as_secs_f64() * 1e3,
            backward_ms = (t2 - t1).as_secs_f64() * 1e3,
            adam_ms = t2.elapsed().as_secs_f64() * 1e3,
            "train step phases"
        );
        Ok(())
    })?;
    let trainable = vars.values().map(|v| v.elem_count()).sum();
    Ok((times, TrainStepCounts { trainable, tensors }))
}

/// Median, min and mean of a non-empty list of timings.
fn stats(times: &[f64]) -> (f64, f64, f64) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    (sorted[sorted.len() / 2], sorted[0], mean)
}

/// What one benchmark measured.
struct Timings<'a> {
    times: &'a [f64],
    /// Decoder only: the timings without the per-image context.
    uncached: Option<&'a [f64]>,
    /// Training only.
    step: Option<TrainStepCounts>,
}

fn report(args: &BenchArgs, cfg: &SamConfig, t: &Timings, device: &Device) -> Result<()> {
    let times = t.times;
    let (median, min, mean) = stats(times);
    let uncached = t.uncached.map(stats);
    let part = match args.part {
        Part::Encoder => "encoder",
        Part::Decoder => "decoder_per_prompt",
        Part::TrainStep => "train_step",
        Part::Serve => "serve",
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
            "peak_rss_mib": crate::runtime::memory::peak_rss_mib(),
            "peak_device_mib": match device {
                Device::Cpu => None,
                d => crate::runtime::memory::peak_mib(d),
            },
            "peak_allocated_mib": crate::runtime::memory::peak_allocated_mib(device),
            "device": device_name,
            "threads": rayon::current_num_threads(),
            "batch": args.batch,
            "depth": args.depth,
            "slices_per_s": args.depth.map(|d| d as f64 / (median / 1e3)),
            "full": args.full,
            "lora": args.lora,
            "checkpoint_blocks": args.checkpoint_blocks,
            "precision": precision(args, device)?,
            "flash_attention": crate::kernels::attention::flash::enabled(),
            "tensor_core_attention": crate::kernels::attention::tensor_cores::enabled(),
            "cuda_runtime": std::env::var("MSA_CUDA_RUNTIME").unwrap_or_else(|_| "tuned".into()),
            "trainable": t.step.map(|c| c.trainable),
            "tensors_per_step": t.step.map(|c| c.tensors),
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
            crate::runtime::memory::peak_rss_mib().unwrap_or(f64::NAN)
        );
        if let Some((m, mn, _)) = uncached {
            println!("  without the per-image decoder context: median {m:.1} ms, min {mn:.1} ms");
        }
    }
    Ok(())
}
