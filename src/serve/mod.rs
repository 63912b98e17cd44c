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
mod upload;

use crate::io::nifti::{self, NiftiVolume};
use crate::io::DecodeLimits;
use anyhow::{bail, Context, Result};
use models::ModelSet;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use store::ImageStore;

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
pub fn bind(settings: &Settings) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((settings.host, settings.port))
        .with_context(|| format!("cannot listen on {}:{}", settings.host, settings.port))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves on `listener` until `stop` completes.
pub fn serve_until(
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

/// A label volume as DICOM SEG bytes (segment n for label n, up to the largest present).
pub fn seg_bytes(
    labels: &[u8],
    grid: &crate::io::Volume,
    source: &crate::io::dicom::SeriesSource,
) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
    let path = dir.path().join("segmentation.dcm");
    crate::io::dicom::seg::write(&path, labels, grid, source, &[])?;
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
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
