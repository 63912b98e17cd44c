//! Times each part of the LiteMedSAM encoder (random weights) on this machine.
use candle_core::{Device, Tensor};
use msa::model::image_encoder::ImageEncoder;
use msa::model::tiny_vit::Stage;
use msa::model::{config::SamConfig, sam::Sam};
use msa::params::{Params, Source};
use std::time::Instant;

#[path = "shared/timing.rs"]
mod timing;

/// This example's timer: 3 runs after a warm-up.
fn time<T>(label: &str, f: impl Fn() -> candle_core::Result<T>) -> candle_core::Result<T> {
    timing::time(label, 3, f)
}

fn main() -> anyhow::Result<()> {
    msa::runtime::init();
    let device = Device::Cpu;
    let cfg = SamConfig::preset("lite_medsam")?;
    let sam = Sam::load(&Params::new(Source::Random { std: 0.02 }, &device), &cfg)?;
    let ImageEncoder::TinyVit(enc) = &sam.image_encoder else {
        anyhow::bail!("not tinyvit")
    };
    let x = Tensor::randn(0f32, 1f32, (1, 3, 256, 256), &device)?;
    let t0 = Instant::now();
    let mut x = time("patch_embed", || enc.patch_embed.forward(&x))?;
    for (i, stage) in enc.stages.iter().enumerate() {
        match stage {
            Stage::Conv(blocks) => {
                for (j, b) in blocks.iter().enumerate() {
                    x = time(&format!("s{i} mbconv{j}"), || b.forward(&x))?;
                }
            }
            Stage::Attention(blocks) => {
                for (j, b) in blocks.iter().enumerate() {
                    time(&format!("s{i} b{j} win-attn"), || b.window_attention(&x))?;
                    x = time(&format!("s{i} block{j}"), || b.forward(&x, None))?;
                }
            }
        }
        if let Some(m) = enc.merges.get(i) {
            x = time(&format!("merge{i}"), || m.forward(&x))?;
        }
    }
    time("neck", || enc.neck.forward(&x))?;
    println!("total (x3 each) {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
