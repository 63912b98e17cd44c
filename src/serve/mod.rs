//! `msa serve`: a web page and a JSON API to segment images and volumes from clicks and
//! boxes, with the same models, adapters and prompt files as the command line.

// No panic on user data (RELIABILITY.md): an index or unwrap here is either an error or
// carries its proof in an `expect(..., reason)`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod api;
mod auth;
pub mod error;
pub mod models;
mod page;
pub mod segment;
pub mod store;

use crate::io::nifti::{self, NiftiVolume};
use crate::io::DecodeLimits;
use anyhow::{bail, Context, Result};
use models::ModelSet;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::ImageStore;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Base models to offer, the first being the default: checkpoints (.pth, safetensors)
    /// or named models.
    #[arg(long = "checkpoint", default_value = "lite_medsam")]
    pub checkpoints: Vec<PathBuf>,
    /// JSON architecture description for custom checkpoints.
    #[arg(long)]
    pub config: Option<PathBuf>,
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
    #[arg(long, value_enum)]
    pub precision: Option<crate::model::precision::Precision>,
}

/// Bounds and settings of a server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: IpAddr,
    pub port: u16,
    pub token: Option<String>,
    pub max_upload_bytes: usize,
    pub decode: DecodeLimits,
    pub max_images: usize,
    /// Slice embeddings kept per image (about 4 MiB each for a 64x64x256 embedding).
    pub max_embeddings_per_image: usize,
    pub image_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            token: None,
            max_upload_bytes: 512 << 20,
            decode: DecodeLimits::default(),
            max_images: 8,
            max_embeddings_per_image: 48,
            image_timeout: Duration::from_secs(3600),
        }
    }
}

impl Settings {
    /// Refuses to serve other machines without a token.
    pub fn check(&self) -> Result<()> {
        if !self.host.is_loopback() && self.token.as_deref().is_none_or(str::is_empty) {
            bail!(
                "--host {} lets other machines in: pass --token T (or set MSA_TOKEN), and open \
                 the page as http://HOST:{}/?token=T",
                self.host,
                self.port
            );
        }
        if let Some(t) = &self.token {
            if !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
            {
                bail!("--token: use letters, digits and -_.~ only (it travels in a URL)");
            }
        }
        Ok(())
    }
}

pub struct ServerState {
    pub models: ModelSet,
    pub store: ImageStore,
    pub settings: Settings,
    /// Permits for model and codec work running at once.
    pub workers: tokio::sync::Semaphore,
}

/// A server running on its own threads; dropping it stops it.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("the server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Binds `settings.host:port` (port 0: any free port) and serves on background threads.
pub fn start(models: ModelSet, settings: Settings) -> Result<Running> {
    settings.check()?;
    let (listener, addr) = bind(&settings)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("msa-serve".into())
        .spawn(move || {
            serve_until(listener, models, settings, async {
                let _ = rx.await;
            })
        })?;
    Ok(Running {
        addr,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// A non-blocking listener on the settings' address, and the address it got.
fn bind(settings: &Settings) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((settings.host, settings.port))
        .with_context(|| format!("cannot listen on {}:{}", settings.host, settings.port))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

fn serve_until(
    listener: TcpListener,
    models: ModelSet,
    settings: Settings,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let store = ImageStore::new(
            settings.max_images,
            settings.max_embeddings_per_image,
            settings.image_timeout,
        );
        let token = settings.token.clone();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let state = Arc::new(ServerState {
            models,
            store,
            settings,
            workers: tokio::sync::Semaphore::new(workers),
        });
        tokio::spawn(expire_images(state.clone()));
        let mut app = api::router(state);
        if let Some(t) = token {
            app = app.layer(axum::middleware::from_fn_with_state(
                Arc::new(t),
                auth::require_token,
            ));
        }
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .context("the server stopped")
    })
}

async fn expire_images(state: Arc<ServerState>) {
    let every =
        (state.settings.image_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let n = state.store.expire();
        if n > 0 {
            tracing::info!(
                "dropped {n} image(s) unused for {:?}",
                state.settings.image_timeout
            );
        }
    }
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
    let device = crate::cli::default_device()?;
    let config = args
        .config
        .as_deref()
        .map(crate::model::SamConfig::from_json_file)
        .transpose()?;
    use crate::model::precision::Precision;
    let precision = Precision::resolve(Some(args.precision.unwrap_or(Precision::F32)), &device)?;
    let base = crate::weights::LoadOptions {
        config: config.as_ref(),
        encoder_dtype: Some(precision.dtype()),
        ..Default::default()
    };
    let models = ModelSet::load(&args.checkpoints, &args.adapters, &base, &device)?;
    let (listener, addr) = bind(&settings)?;
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
    serve_until(listener, models, settings, async {
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

/// A label volume as `.nii.gz` bytes on the grid and affine of `like`.
pub fn nifti_bytes(labels: &[u8], like: &NiftiVolume) -> Result<Vec<u8>> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("msa-serve-{}-{n}.nii.gz", std::process::id()));
    nifti::write_labels(&path, labels, like)?;
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()));
    let _ = std::fs::remove_file(&path);
    bytes
}
