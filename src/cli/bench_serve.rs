//! `msa bench serve`: predict requests against one encoded image on a local `msa serve`,
//! at several numbers of concurrent clients: requests per second and latency percentiles.

use crate::serve::models::ModelSet;
use crate::serve::{start, Settings};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct ServeBench<'a> {
    pub checkpoint: &'a Path,
    pub image: Option<&'a Path>,
    pub clients: &'a [usize],
    /// Requests per client count.
    pub requests: usize,
    /// Time bound per client count.
    pub max_seconds: f64,
    pub json: bool,
}

pub fn run(b: &ServeBench) -> Result<()> {
    let device = crate::runtime::device::default_device()?;
    let models = ModelSet::load(
        &[b.checkpoint.to_path_buf()],
        &[],
        &Default::default(),
        &device,
    )?;
    let model = models.bases[0].name.clone();
    let server = start(
        models,
        Settings {
            port: 0,
            ..Settings::default()
        },
    )?;
    let (bytes, source) = image_bytes(b.image)?;
    let agent = agent();
    let url = server.url();
    let upload = agent
        .post(format!("{url}/api/images"))
        .send(&bytes[..])?
        .into_body()
        .read_to_vec()?;
    let info: serde_json::Value = serde_json::from_slice(&upload)?;
    if info["id"].is_null() {
        bail!("the upload was refused: {info}");
    }
    let id = info["id"]
        .as_str()
        .context("upload answered no id")?
        .to_string();
    let (w, h) = (
        info["width"].as_f64().unwrap_or(1.0),
        info["height"].as_f64().unwrap_or(1.0),
    );
    let predict_url = format!("{url}/api/images/{id}/predict");
    let first = Instant::now();
    let body = click(0, w, h);
    let answer = post(&agent, &predict_url, &body)?;
    let first_ms = first.elapsed().as_secs_f64() * 1e3;
    if answer["encoded"] != true {
        bail!("the first request did not encode the image: {answer}");
    }
    if !b.json {
        println!(
            "{model}, {source} ({w}x{h}); first request (encodes the image): {first_ms:.0} ms"
        );
    }
    for &clients in b.clients {
        let r = load(&predict_url, clients.max(1), b, (w, h))?;
        if b.json {
            println!(
                "{}",
                json!({"part": "serve", "model": model, "image": source, "width": w,
                       "height": h, "clients": clients, "requests": r.latencies.len(),
                       "seconds": r.seconds, "requests_per_s": r.per_second(),
                       "p50_ms": r.percentile(0.5), "p95_ms": r.percentile(0.95),
                       "server_p50_ms": r.server_p50, "first_ms": first_ms,
                       "peak_rss_mib": crate::runtime::memory::peak_rss_mib()})
            );
        } else {
            println!(
                "{clients:>3} client(s): {:>4} requests in {:.1} s, {:.1} req/s, p50 {:.1} ms, p95 {:.1} ms (server p50 {:.1} ms)",
                r.latencies.len(),
                r.seconds,
                r.per_second(),
                r.percentile(0.5),
                r.percentile(0.95),
                r.server_p50
            );
        }
    }
    server.stop()
}

struct LoadResult {
    latencies: Vec<f64>,
    seconds: f64,
    server_p50: f64,
}

impl LoadResult {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds.max(1e-9)
    }

    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies, p)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `clients` threads send clicks until `requests` are done or the time bound passes.
fn load(url: &str, clients: usize, b: &ServeBench, (w, h): (f64, f64)) -> Result<LoadResult> {
    let issued = AtomicUsize::new(0);
    let deadline = Duration::from_secs_f64(b.max_seconds);
    let start = Instant::now();
    let per_thread: Vec<Result<Vec<(f64, f64)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let agent = agent();
                    let mut out = vec![];
                    loop {
                        let n = issued.fetch_add(1, Ordering::Relaxed);
                        if n >= b.requests || start.elapsed() > deadline {
                            return Ok(out);
                        }
                        let t = Instant::now();
                        let answer = post(&agent, url, &click(n, w, h))?;
                        let ms = t.elapsed().as_secs_f64() * 1e3;
                        out.push((ms, answer["ms"].as_f64().unwrap_or(f64::NAN)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a client thread panicked"))
            })
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut all = vec![];
    for r in per_thread {
        all.extend(r?);
    }
    let mut latencies: Vec<f64> = all.iter().map(|x| x.0).collect();
    let mut server: Vec<f64> = all.iter().map(|x| x.1).collect();
    latencies.sort_by(f64::total_cmp);
    server.sort_by(f64::total_cmp);
    Ok(LoadResult {
        latencies,
        seconds,
        server_p50: percentile(&server, 0.5),
    })
}

/// A click near the middle, moved a little per request.
fn click(n: usize, w: f64, h: f64) -> String {
    let dx = (n % 5) as f64 - 2.0;
    json!({"points": [[(w / 2.0 + dx).round(), (h / 2.0).round(), 1]]}).to_string()
}

fn post(agent: &ureq::Agent, url: &str, body: &str) -> Result<serde_json::Value> {
    let mut response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let v: serde_json::Value = serde_json::from_slice(&response.body_mut().read_to_vec()?)?;
    if status != 200 {
        bail!("POST {url}: {status} {v}");
    }
    Ok(v)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// The image's bytes, or a generated 512x512 PNG (a bright disk on a dark background).
fn image_bytes(path: Option<&Path>) -> Result<(Vec<u8>, String)> {
    if let Some(p) = path {
        let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        return Ok((bytes, p.display().to_string()));
    }
    let img = image::RgbImage::from_fn(512, 512, |x, y| {
        let (dx, dy) = (x as f32 - 256.0, y as f32 - 256.0);
        let v = if dx * dx + dy * dy < 120.0 * 120.0 {
            200
        } else {
            40
        };
        image::Rgb([v, v, v])
    });
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok((out.into_inner(), "generated 512x512 disk".into()))
}
