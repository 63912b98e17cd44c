//! `msa serve`: the command's options, and the models it loads before it serves.

use crate::serve::models::ModelSet;
use crate::serve::Settings;
use crate::weights::ModelFlags;
use anyhow::{Context, Result};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Base models to offer, the first being the default: checkpoints (.pth, safetensors)
    /// or named models.
    #[arg(long = "checkpoint", default_value = "lite_medsam")]
    pub checkpoints: Vec<PathBuf>,
    /// JSON architecture description for custom checkpoints.
    #[arg(long = "model-config", alias = "config")]
    pub model_config: Option<PathBuf>,
    /// Adapter files to offer; each is served on the first checkpoint it was trained for.
    #[arg(long = "adapters")]
    pub adapters: Vec<PathBuf>,
    /// Address to listen on. Anything but loopback requires --token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Token that clients must present (bearer header, or open the page with ?token=T).
    #[arg(long, env = "MSA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Largest upload, in MiB.
    #[arg(long, default_value_t = 512)]
    pub max_upload_mib: usize,
    /// Images kept in memory; the least recently used is dropped for a new one.
    #[arg(long, default_value_t = 8)]
    pub max_images: usize,
    /// Minutes after which an unused image is dropped.
    #[arg(long, default_value_t = 60)]
    pub image_timeout_min: u64,
    /// The image encoder's dtype: f32 (the default, which reproduces the official outputs),
    /// or bf16 (GPUs only) or f16 for less memory and time on a GPU.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: crate::model::precision::Precision,
}

/// `msa serve`: loads the models, then serves until Ctrl-C.
pub fn run(args: &ServeArgs) -> Result<()> {
    let settings = Settings {
        host: parse_host(&args.host)?,
        port: args.port,
        token: args.token.clone(),
        max_upload_bytes: args.max_upload_mib << 20,
        max_images: args.max_images,
        image_timeout: Duration::from_secs(args.image_timeout_min.max(1) * 60),
        ..Settings::default()
    };
    settings.check()?;
    let device = crate::runtime::device::default_device()?;
    let flags = ModelFlags::read(args.model_config.as_deref(), Some(args.precision), &device)?;
    let models = ModelSet::load(
        &args.checkpoints,
        &args.adapters,
        &flags.load_options(),
        &device,
    )?;
    let precision = flags.precision;
    let (listener, addr) = crate::serve::bind(&settings)?;
    let names: Vec<&str> = models.bases.iter().map(|b| b.name.as_str()).collect();
    println!(
        "msa serve: models {names:?} ({precision:?}), {} adapter file(s); open http://{addr}/{}",
        models.adapters.len(),
        if settings.token.is_some() {
            "?token=…"
        } else {
            ""
        }
    );
    crate::serve::serve_until(listener, models, settings, async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn parse_host(host: &str) -> Result<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    host.parse().with_context(|| {
        format!("--host `{host}`: expected an IP address such as 127.0.0.1 or 0.0.0.0")
    })
}
