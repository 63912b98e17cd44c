//! Times the parts of the mask decoder's per-prompt work (LiteMedSAM shapes, random weights).
use candle_core::{DType, Device, Tensor};
use msa::model::{config::SamConfig, sam::Sam, Prompts};
use msa::params::{Params, Source};

#[path = "shared/timing.rs"]
mod timing;

/// This example's timer: 10 runs after a warm-up.
fn time<T>(label: &str, f: impl Fn() -> candle_core::Result<T>) -> candle_core::Result<T> {
    timing::time(label, 10, f)
}

fn main() -> anyhow::Result<()> {
    msa::runtime::init();
    let device = Device::Cpu;
    let cfg = SamConfig::preset("lite_medsam")?;
    let sam = Sam::load(&Params::new(Source::Random { std: 0.02 }, &device), &cfg)?;
    let emb = Tensor::randn(0f32, 1f32, (1, 256, 64, 64), &device)?;
    let prompts = Prompts {
        points: Some((
            Tensor::new(&[[[100f32, 150.]]], &device)?,
            Tensor::ones((1, 1), DType::F32, &device)?,
        )),
        ..Default::default()
    };
    let ctx = sam.decoder_context(&emb)?;
    if let Ok(n) = std::env::var("DECODE_ONLY") {
        // For a profiler: nothing but per-prompt decoding.
        for _ in 0..n.parse::<usize>()? {
            sam.decode_cached(&emb, &ctx, &prompts)?;
        }
        return Ok(());
    }
    time("decode_cached", || sam.decode_cached(&emb, &ctx, &prompts))?;
    let md = &sam.mask_decoder;
    let tokens = Tensor::randn(0f32, 1f32, (1, 7, 256), &device)?;
    let prompt = Tensor::randn(0f32, 1f32, (1, 256), &device)?;
    let tr = &md.transformer;
    time("transformer", || {
        tr.forward(&ctx.src, &ctx.pos, &tokens, &prompt, ctx.first.as_ref())
    })?;
    let (q, k) = tr.forward(&ctx.src, &ctx.pos, &tokens, &prompt, ctx.first.as_ref())?;
    time("layer0", || {
        tr.layers[0].forward(
            &tokens,
            &ctx.src,
            &tokens,
            &ctx.pos,
            &prompt,
            ctx.first.as_ref(),
        )
    })?;
    time("layer1", || {
        tr.layers[1].forward(&q, &k, &tokens, &ctx.pos, &prompt, None)
    })?;
    time("final attn", || {
        tr.final_attn.forward(&q, &(&k + &ctx.pos)?, &k)
    })?;
    let l0 = &tr.layers[0];
    let i2t = &l0.cross_image_to_token;
    let qi = Tensor::randn(0f32, 1f32, (1, 4096, 128), &device)?;
    let kt = Tensor::randn(0f32, 1f32, (1, 7, 128), &device)?;
    time("i2t attend+proj", || i2t.attend_projected(&qi, &kt, &kt))?;
    time("t2i attend+proj", || {
        l0.cross_token_to_image.attend_projected(&kt, &qi, &qi)
    })?;
    time("out_proj 4096", || i2t.out_proj.forward(&qi))?;
    let big = Tensor::randn(0f32, 1f32, (1, 4096, 256), &device)?;
    time("norm4", || l0.norm4.forward(&big))?;
    time("add 4096x256", || &big + &big)?;
    time("k_proj 4096", || {
        l0.cross_token_to_image.k_proj.forward(&big)
    })?;
    let x = Tensor::randn(0f32, 1f32, (1, 64, 64, 256), &device)?;
    time("upscale", || sam.mask_decoder.upscale(&x))?;
    let u1 = time("upscale1", || sam.mask_decoder.upscale1.forward(&x))?;
    let n = time("upscale norm", || {
        sam.mask_decoder.upscale_norm.forward(&u1)
    })?;
    let g = time("gelu", || msa::model::nn::gelu(&n))?;
    time("upscale2", || sam.mask_decoder.upscale2.forward(&g))?;
    Ok(())
}
