//! The Rust side of BENCHMARKS.md's Python binding row: LiteMedSAM (real weights) on a
//! shipped slice, the time of `set_image` (encode) and of one box prompt against the cached
//! embedding, with the mask and logits copied out as the Python API returns them.
//!
//!     cargo run --release --example predict_latency -- IMAGE X0,Y0,X1,Y1 [RUNS]
use msa::infer::Predictor;
use msa::io::prompt::UserPrompt;
use std::path::Path;
use std::time::Instant;

fn median_ms(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2] * 1e3
}

fn main() -> anyhow::Result<()> {
    msa::runtime::init();
    let args: Vec<String> = std::env::args().collect();
    let (image, bbox) = match args.as_slice() {
        [_, image, bbox, ..] => (image, bbox),
        _ => anyhow::bail!("usage: predict_latency IMAGE X0,Y0,X1,Y1 [RUNS]"),
    };
    let runs: usize = args.get(3).map_or(Ok(200), |r| r.parse())?;
    let b: Vec<f32> = bbox.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let prompt = UserPrompt {
        points: vec![],
        bbox: Some([b[0], b[1], b[2], b[3]]),
    };
    let device = candle_core::Device::Cpu;
    let loaded = msa::weights::load_sam(Path::new("lite_medsam"), None, None, &device)?;
    let img = msa::io::image::load_rgb(Path::new(image))?;
    let mut p = Predictor::new(&loaded.sam);
    let mut embed = vec![];
    for _ in 0..10 {
        let t = Instant::now();
        p.set_image(&img)?;
        embed.push(t.elapsed().as_secs_f64());
    }
    let mut predict = vec![];
    for i in 0..runs + 10 {
        let t = Instant::now();
        let out = p.predict(&prompt, false)?;
        let logits = out.masks_logits.flatten_all()?.to_vec1::<f32>()?;
        let mask: Vec<bool> = logits.iter().map(|&v| v > 0.0).collect();
        std::hint::black_box((mask, out.iou_values()?));
        if i >= 10 {
            predict.push(t.elapsed().as_secs_f64());
        }
    }
    println!(
        "{}",
        serde_json::json!({"impl": "msa-rust", "embed_ms": median_ms(embed),
            "predict_ms": median_ms(predict), "runs": runs,
            "threads": rayon::current_num_threads()})
    );
    Ok(())
}
