//! `msa info`: what a checkpoint holds, or which series a DICOM study holds.

use super::ModelArgs;
use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// SAM checkpoint (official .pth or safetensors, or a named model such as
    /// `lite_medsam`), or a DICOM folder or file, whose series are listed.
    pub checkpoint: PathBuf,
    /// JSON architecture description for a custom checkpoint.
    #[arg(long = "model-config", alias = "config")]
    pub model_config: Option<PathBuf>,
    /// An adapter file to apply over the checkpoint.
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InfoArgs) -> Result<()> {
    if crate::io::volume_file::is_dicom(&args.checkpoint) {
        return study(args);
    }
    let model = ModelArgs {
        checkpoint: args.checkpoint.clone(),
        model_config: args.model_config.clone(),
        image_size: None,
        adapters: args.adapters.clone(),
        precision: crate::model::precision::Precision::F32,
    };
    let loaded = model.load(&candle_core::Device::Cpu)?;
    let frozen: usize = loaded.part_params.values().sum();
    let total = frozen + loaded.adapter_params;
    let pct = 100.0 * loaded.adapter_params as f64 / total.max(1) as f64;
    let cfg = &loaded.sam.config;
    if args.json {
        let v = json!({
            "checkpoint": args.checkpoint.display().to_string(),
            "architecture": loaded.preset,
            "image_size": cfg.img_size,
            "checkpoint_image_size": loaded.checkpoint_image_size,
            "parameters": loaded.part_params,
            "total_parameters": total,
            "trainable_parameters": loaded.adapter_params,
            "adapters": {
                "present": !loaded.adapter_keys.is_empty(),
                "tensors": loaded.adapter_keys.len(),
                "parameters": loaded.adapter_params,
                "settings": loaded.sam.adapters,
                "metadata": loaded.adapter_meta,
            },
            "config": cfg,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("checkpoint    {}", args.checkpoint.display());
    println!("architecture  {}", loaded.preset);
    let encoder = match &cfg.encoder {
        crate::model::EncoderConfig::Vit(v) => format!(
            "ViT: {} blocks of width {}, global {:?}",
            v.depth, v.embed_dim, v.global_attn_indexes
        ),
        crate::model::EncoderConfig::TinyVit(t) => format!(
            "TinyViT: depths {:?}, widths {:?}, windows {:?}",
            t.depths, t.embed_dims, t.window_sizes
        ),
    };
    println!(
        "image size    {} (embedding {}x{}; {encoder})",
        cfg.img_size,
        cfg.grid(),
        cfg.grid(),
    );
    println!("preprocess    {:?}", cfg.preprocess);
    println!("parameters");
    for (part, n) in &loaded.part_params {
        println!("  {part:<16}{n:>14}");
    }
    println!("  {:<16}{:>14}", "adapters", loaded.adapter_params);
    println!("  {:<16}{total:>14}", "total");
    println!(
        "trainable     {} of {total} ({pct:.2}%)",
        loaded.adapter_params
    );
    if loaded.adapter_keys.is_empty() {
        println!("adapters      none");
    } else {
        let a = &loaded.sam.adapters;
        println!(
            "adapters      {} tensors: encoder {}, depth {}, decoder {}, lora rank {}, ratio {}",
            loaded.adapter_keys.len(),
            a.encoder,
            a.depth,
            a.decoder,
            a.lora_rank,
            a.ratio
        );
    }
    Ok(())
}

/// The series of a DICOM folder or file, one line (or JSON object) each.
fn study(args: &InfoArgs) -> Result<()> {
    let series = crate::io::dicom::study::scan(&args.checkpoint)?;
    if args.json {
        let v: Vec<_> = series
            .iter()
            .map(|s| {
                json!({
                    "uid": s.uid,
                    "number": s.number,
                    "description": s.description,
                    "modality": s.modality,
                    "slices": s.files.len(),
                    "rows": s.size.0,
                    "columns": s.size.1,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}: {} series", args.checkpoint.display(), series.len());
    print!("{}", crate::io::dicom::study::table(&series));
    Ok(())
}
