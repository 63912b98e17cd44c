//! `msa serve`'s page in a real browser (Debian's chromium through chromedriver): upload an
//! image, click, drag a box, and check that the mask drawn on the page is the mask
//! `msa predict` writes for the same prompts. `.ci/run` installs chromium; elsewhere the test
//! fails with what to install, unless MSA_SKIP_BROWSER_TEST=1 says to skip it.

use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use fantoccini::{Client, ClientBuilder, Locator};
use msa::serve::models::ModelSet;
use msa::serve::{start, Running, Settings};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Option<PathBuf> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_driver(exe: &Path) -> Driver {
    let port = free_port();
    let child = Command::new(exe)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver { child, port }
}

/// `msa serve` with LiteMedSAM on a free local port.
async fn lite_medsam_server() -> Running {
    let models = tokio::task::spawn_blocking(|| {
        ModelSet::load(
            &[PathBuf::from("lite_medsam")],
            &[],
            &Default::default(),
            &candle_core::Device::Cpu,
        )
    })
    .await
    .unwrap()
    .unwrap();
    let settings = Settings {
        port: 0,
        ..Settings::default()
    };
    start(models, settings).unwrap()
}

async fn browser(driver: &Driver) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"]
        }
    });
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromium session")
}

/// Polls `script` (a function body returning a value) until it returns true-ish.
async fn wait_for(client: &Client, script: &str, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = client.execute(script, vec![]).await.unwrap();
        if v.as_bool() != Some(false) && !v.is_null() {
            return v;
        }
        let status = client
            .execute(
                "return document.getElementById('status').textContent",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Viewport coordinates of image pixel (x, y) on the prompt canvas.
async fn viewport_xy(client: &Client, x: f64, y: f64) -> (f64, f64) {
    let r = client
        .execute(
            "const c = document.getElementById('prompts'); const r = c.getBoundingClientRect(); \
             return [r.left, r.top, r.width / c.width, r.height / c.height];",
            vec![],
        )
        .await
        .unwrap();
    let f = |i: usize| r[i].as_f64().unwrap();
    (
        (f(0) + (x + 0.5) * f(2)).round(),
        (f(1) + (y + 0.5) * f(3)).round(),
    )
}

async fn mouse(client: &Client, path: &[(f64, f64)]) {
    let mut m = MouseActions::new("mouse".into()).then(PointerAction::MoveTo {
        duration: None,
        x: path[0].0,
        y: path[0].1,
    });
    m = m.then(PointerAction::Down {
        button: MOUSE_BUTTON_LEFT,
    });
    for &(x, y) in &path[1..] {
        m = m.then(PointerAction::MoveTo {
            duration: Some(Duration::from_millis(50)),
            x,
            y,
        });
    }
    m = m.then(PointerAction::Up {
        button: MOUSE_BUTTON_LEFT,
    });
    client.perform_actions(m).await.unwrap();
}

/// The mask canvas as 0/1 per pixel, and the prompts the page holds for slice 0.
async fn page_mask(client: &Client) -> (Vec<bool>, Value) {
    let v = client
        .execute(
            "const c = document.getElementById('mask'); \
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
             let s = ''; for (let i = 3; i < d.length; i += 4) s += d[i] > 0 ? '1' : '0'; \
             return [s, state.prompts[0][1]];",
            vec![],
        )
        .await
        .unwrap();
    let bits = v[0].as_str().unwrap().bytes().map(|b| b == b'1').collect();
    (bits, v[1].clone())
}

async fn wait_for_mask(client: &Client, requests_before: u64) {
    let script = format!(
        "return !state.busy && !state.pending && window.predictions > {requests_before} && \
         state.masks[0] !== undefined"
    );
    wait_for(client, &script, "the mask").await;
}

/// `msa predict --checkpoint lite_medsam` for the same prompts, as 0/1 per pixel.
fn cli_mask(image: &Path, prompts: &Value, dir: &Path) -> Vec<bool> {
    let file = dir.join("prompts.json");
    std::fs::write(&file, prompts.to_string()).unwrap();
    let out = dir.join("cli_mask.png");
    let status = Command::new(env!("CARGO_BIN_EXE_msa"))
        .args(["predict", "--checkpoint", "lite_medsam", "--image"])
        .arg(image)
        .arg("--prompts")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let mask = image::open(&out).unwrap().to_luma8();
    mask.pixels().map(|p| p.0[0] == 255).collect()
}

fn disk_image(path: &Path) {
    let img = image::RgbImage::from_fn(160, 120, |x, y| {
        let (dx, dy) = (x as f32 - 70.0, y as f32 - 62.0);
        let v = if dx * dx / 1.4 + dy * dy < 900.0 {
            210
        } else {
            35
        };
        image::Rgb([v, v, v])
    });
    img.save(path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_segments_a_click_and_a_box_like_msa_predict() {
    let Some(driver_exe) = chromedriver() else {
        if std::env::var("MSA_SKIP_BROWSER_TEST").as_deref() == Ok("1") {
            eprintln!("skipped: MSA_SKIP_BROWSER_TEST=1");
            return;
        }
        panic!("the browser test needs chromium and chromedriver: apt-get install chromium chromium-driver (or set MSA_SKIP_BROWSER_TEST=1)");
    };
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("disk.png");
    disk_image(&image_path);
    let server = lite_medsam_server().await;
    let driver = start_driver(&driver_exe);
    let client = browser(&driver).await;

    client.goto(&server.url()).await.unwrap();
    wait_for(
        &client,
        "return document.getElementById('model').options.length > 0",
        "the model list",
    )
    .await;
    // Count the page's predict requests by wrapping fetch.
    client
        .execute(
            "window.predictions = 0; const f = window.fetch; window.fetch = async (...a) => { \
             const r = await f(...a); if (String(a[0]).endsWith('/predict')) window.predictions++; return r; };",
            vec![],
        )
        .await
        .unwrap();
    let input = client.find(Locator::Id("file")).await.unwrap();
    input.send_keys(image_path.to_str().unwrap()).await.unwrap();
    wait_for(
        &client,
        "return document.getElementById('status').textContent.includes('Click to segment')",
        "the image",
    )
    .await;

    // A click on the disk.
    let at = viewport_xy(&client, 70.0, 62.0).await;
    mouse(&client, &[at]).await;
    wait_for_mask(&client, 0).await;
    let (mask, prompts) = page_mask(&client).await;
    let points = prompts["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{prompts}");
    assert_eq!(points[0][2], 1);
    // LiteMedSAM was trained with boxes: a click alone gives a small mask, but not none.
    assert!(
        mask.iter().any(|&m| m),
        "the mask canvas is empty after a click"
    );
    assert_eq!(mask, cli_mask(&image_path, &prompts, dir.path()), "click");

    // A box dragged around it.
    let (from, to) = (
        viewport_xy(&client, 28.0, 25.0).await,
        viewport_xy(&client, 112.0, 100.0).await,
    );
    mouse(
        &client,
        &[from, ((from.0 + to.0) / 2.0, (from.1 + to.1) / 2.0), to],
    )
    .await;
    wait_for_mask(&client, 1).await;
    let (mask, prompts) = page_mask(&client).await;
    assert!(prompts["box"].is_array(), "{prompts}");
    let inside = mask.iter().filter(|&&m| m).count();
    assert!(
        inside > 1000 && inside < 160 * 120 / 2,
        "{inside} mask pixels"
    );
    assert_eq!(
        mask,
        cli_mask(&image_path, &prompts, dir.path()),
        "click and box"
    );

    let shot = client.screenshot().await.unwrap();
    let shot_path = dir.path().join("page.png");
    std::fs::write(&shot_path, &shot).unwrap();
    let img = image::load_from_memory(&shot).unwrap();
    assert!(
        img.width() >= 800,
        "screenshot {}x{}",
        img.width(),
        img.height()
    );
    if let Ok(keep) = std::env::var("MSA_BROWSER_SCREENSHOT") {
        std::fs::copy(&shot_path, keep).unwrap();
    }
    client.close().await.unwrap();
    server.stop().unwrap();
}

/// Bounding box (x0, y0, x1, y1) of `label` on slice k of a label volume, with a margin.
fn label_box(labels: &msa::io::Volume, label: f32, k: usize) -> Option<[f64; 4]> {
    let [nx, ny, _] = labels.dims;
    let slice = labels.slice(k).unwrap();
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..ny {
        for x in 0..nx {
            if slice[y * nx + x] == label {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    (x0 <= x1).then_some({
        [
            x0 as f64 - 1.0,
            y0 as f64 - 1.0,
            x1 as f64 + 1.0,
            y1 as f64 + 1.0,
        ]
    })
}

/// The README's picture: a shipped hippocampus MRI volume in the page, boxes drawn on two
/// slices per class, propagated with interpolation, then a box and a click on the shown
/// slice. Run with `MSA_README_SCREENSHOT=docs/serve.png cargo test --release --test browser
/// -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the README screenshot"]
async fn readme_screenshot() {
    let target = std::env::var("MSA_README_SCREENSHOT").expect("MSA_README_SCREENSHOT=path");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/hippocampus3d");
    let image = root.join("imagesTr/hippocampus_004.nii.gz");
    let labels = msa::io::nifti::read(&root.join("labelsTr/hippocampus_004.nii.gz"))
        .unwrap()
        .volume;
    let server = lite_medsam_server().await;
    let driver = start_driver(&chromedriver().expect("chromedriver"));
    let client = browser(&driver).await;
    client.goto(&server.url()).await.unwrap();
    wait_for(
        &client,
        "return document.getElementById('model').options.length > 0",
        "models",
    )
    .await;
    let input = client.find(Locator::Id("file")).await.unwrap();
    input.send_keys(image.to_str().unwrap()).await.unwrap();
    wait_for(
        &client,
        "return document.getElementById('status').textContent.includes('Click to segment')",
        "the volume",
    )
    .await;
    let nz = labels.dims[2];
    let area = |k: usize| {
        labels
            .slice(k)
            .unwrap()
            .iter()
            .filter(|&&v| v > 0.0)
            .count()
    };
    let mid = (0..nz).max_by_key(|&k| area(k)).unwrap();
    let set = |script: String| {
        let client = client.clone();
        async move { client.execute(&script, vec![]).await.unwrap() }
    };
    for (label, keys) in [(1.0, [mid - 3, mid + 3]), (2.0, [mid - 2, mid + 4])] {
        for k in keys {
            let Some([x0, y0, x1, y1]) = label_box(&labels, label, k) else {
                continue;
            };
            set(format!(
                "const s = document.getElementById('slice'); s.value = {k}; \
                 s.dispatchEvent(new Event('input')); \
                 const c = document.getElementById('class'); c.value = {label}; \
                 c.dispatchEvent(new Event('change'));"
            ))
            .await;
            wait_for(
                &client,
                &format!("return state.slice === {k} && !state.busy"),
                "the slice",
            )
            .await;
            let (a, b) = (
                viewport_xy(&client, x0, y0).await,
                viewport_xy(&client, x1, y1).await,
            );
            mouse(&client, &[a, ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0), b]).await;
            wait_for(&client, "return !state.busy && !state.pending", "the mask").await;
        }
    }
    client
        .find(Locator::Id("propagate"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &client,
        "return state.hasLabels && !document.getElementById('propagate').disabled",
        "propagation",
    )
    .await;
    set(format!(
        "const s = document.getElementById('slice'); s.value = {mid}; s.dispatchEvent(new Event('input'));"
    ))
    .await;
    wait_for(
        &client,
        &format!("return state.slice === {mid}"),
        "the middle slice",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shot = client.screenshot().await.unwrap();
    std::fs::write(&target, shot).unwrap();
    client.close().await.unwrap();
    server.stop().unwrap();
}
