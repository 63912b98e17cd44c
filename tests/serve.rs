//! `msa serve`'s API against a live server on a free local port: the answers agree with
//! the library and the command line, and hostile input gets a 4xx while the server serves on.

mod common;

use common::{fixture, nifti_claiming, png_claiming};
use msa::infer::Predictor;
use msa::io::nifti::{self, NiftiVolume};
use msa::io::prompt::UserPrompt;
use msa::io::Volume;
use msa::model::SamConfig;
use msa::serve::models::ModelSet;
use msa::serve::{start, Running, Settings};
use msa::weights::LoadOptions;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn tiny_models() -> ModelSet {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    ModelSet::load(
        &[fixture("sam_tiny.pth")],
        &[],
        &LoadOptions {
            config: Some(&cfg),
            ..Default::default()
        },
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

fn serve_models(models: ModelSet) -> Running {
    start(
        models,
        Settings {
            port: 0,
            ..Settings::default()
        },
    )
    .unwrap()
}

/// `msa predict-volume` on the tiny model (with `adapters` if given); the labels written.
/// The tiny model served with its encoder in `dtype`.
fn serve_in(dtype: candle_core::DType) -> Running {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let models = ModelSet::load(
        &[fixture("sam_tiny.pth")],
        &[],
        &LoadOptions {
            config: Some(&cfg),
            encoder_dtype: Some(dtype),
            ..Default::default()
        },
        &candle_core::Device::Cpu,
    )
    .unwrap();
    serve_models(models)
}

/// `msa predict` with the tiny model at `precision` on one image and prompt file: its mask.
fn cli_predict(image: &Path, prompts: &Path, out: &Path, precision: &str) -> image::GrayImage {
    let status = Command::new(env!("CARGO_BIN_EXE_msa"))
        .args(["predict", "--precision", precision, "--checkpoint"])
        .arg(fixture("sam_tiny.pth"))
        .arg("--config")
        .arg(fixture("sam_tiny.json"))
        .arg("--image")
        .arg(image)
        .arg("--prompts")
        .arg(prompts)
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
    image::open(out).unwrap().to_luma8()
}

fn cli_predict_volume(
    input: &Path,
    prompts: &Value,
    adapters: Option<&Path>,
    dir: &Path,
) -> Vec<f32> {
    let prompts_path = dir.join("prompts.json");
    std::fs::write(&prompts_path, prompts.to_string()).unwrap();
    let out = dir.join("cli.nii.gz");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msa"));
    cmd.args(["predict-volume", "--checkpoint"])
        .arg(fixture("sam_tiny.pth"))
        .arg("--config")
        .arg(fixture("sam_tiny.json"));
    if let Some(a) = adapters {
        cmd.arg("--adapters").arg(a);
    }
    let status = cmd
        .arg("--image")
        .arg(input)
        .arg("--prompts")
        .arg(&prompts_path)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    nifti::read(&out).unwrap().volume.data
}

/// The tiny model with one adapter file.
fn serve_with_adapters(file: &Path) -> Running {
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let models = ModelSet::load(
        &[fixture("sam_tiny.pth")],
        &[file.to_path_buf()],
        &LoadOptions {
            config: Some(&cfg),
            ..Default::default()
        },
        &candle_core::Device::Cpu,
    )
    .unwrap();
    serve_models(models)
}

fn serve(settings: Settings) -> Running {
    start(
        tiny_models(),
        Settings {
            port: 0,
            ..settings
        },
    )
    .unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, body) of a request; `body` is sent as the request body when given.
fn call(server: &Running, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
    let url = format!("{}{path}", server.url());
    let agent = agent();
    let response = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        ("DELETE", _) => agent.delete(&url).call(),
        ("POST", Some(b)) => agent.post(&url).send(b),
        ("POST", None) => agent.post(&url).send_empty(),
        _ => panic!("{method}"),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let bytes = response.into_body().read_to_vec().unwrap();
    (status, bytes)
}

fn call_json(server: &Running, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
    let (status, bytes) = call(server, method, path, body);
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{path}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, v)
}

/// A gray disk on a darker background, as PNG bytes.
fn disk_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - w as f32 * 0.45, y as f32 - h as f32 * 0.55);
        let v = if dx * dx + dy * dy < (w.min(h) as f32 * 0.25).powi(2) {
            200
        } else {
            40
        };
        image::Rgb([v, v, v / 2])
    });
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn decode_mask(v: &Value) -> image::GrayImage {
    use base64::Engine;
    let b64 = v["mask_png_base64"].as_str().expect("mask_png_base64");
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory(&png).unwrap().to_luma8()
}

fn upload(server: &Running, bytes: &[u8]) -> Value {
    let (status, v) = call_json(server, "POST", "/api/images", Some(bytes));
    assert_eq!(status, 200, "{v}");
    v
}

#[test]
fn masks_from_the_api_equal_the_predictor_and_the_command_line() {
    let server = serve(Settings::default());
    let (status, health) = call_json(&server, "GET", "/api/health", None);
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (_, models) = call_json(&server, "GET", "/api/models", None);
    assert_eq!(models["models"][0]["name"], "sam_tiny", "{models}");
    assert_eq!(models["adapters"], json!([]));

    let png = disk_png(90, 70);
    let info = upload(&server, &png);
    assert_eq!(
        (&info["width"], &info["height"], &info["slices"]),
        (&json!(90), &json!(70), &json!(1))
    );
    let id = info["id"].as_str().unwrap();
    let body = json!({"points": [[40, 38, 1], [5, 5, 0]], "box": [20, 15, 70, 60], "slice": 0});
    let path = format!("/api/images/{id}/predict");
    let (status, first) = call_json(&server, "POST", &path, Some(body.to_string().as_bytes()));
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["encoded"], true);
    let (_, again) = call_json(&server, "POST", &path, Some(body.to_string().as_bytes()));
    assert_eq!(again["encoded"], false, "the image is encoded once");
    assert!(again["ms"].as_f64().unwrap() > 0.0);
    let mask = decode_mask(&again);
    assert_eq!(mask.dimensions(), (90, 70));
    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));

    // The library's predictor on the same image and prompt.
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let loaded = msa::weights::load_sam(
        &fixture("sam_tiny.pth"),
        Some(&cfg),
        None,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    let mut predictor = Predictor::new(&loaded.sam);
    predictor.set_image(&img).unwrap();
    let prompt = UserPrompt {
        points: vec![(40.0, 38.0, 1), (5.0, 5.0, 0)],
        bbox: Some([20.0, 15.0, 70.0, 60.0]),
    };
    let pred = predictor.predict(&prompt, false).unwrap();
    let expected = pred.binary_mask(0).unwrap();
    let got: Vec<bool> = mask.pixels().map(|p| p.0[0] == 255).collect();
    assert_eq!(got, expected);
    let iou = pred.iou_values().unwrap()[0];
    assert!((again["iou"].as_f64().unwrap() as f32 - iou).abs() < 1e-5);

    // The prompt file the page saves gives `msa predict` the same mask.
    let dir = tempfile::tempdir().unwrap();
    let (image_path, prompts_path, out) = (
        dir.path().join("disk.png"),
        dir.path().join("prompts.json"),
        dir.path().join("mask.png"),
    );
    std::fs::write(&image_path, &png).unwrap();
    let file = json!({"points": body["points"], "box": body["box"]});
    std::fs::write(&prompts_path, file.to_string()).unwrap();
    assert_eq!(cli_predict(&image_path, &prompts_path, &out, "f32"), mask);

    // The display of slice 0 is the image itself.
    let (status, shown) = call(&server, "GET", &format!("/api/images/{id}/slices/0"), None);
    assert_eq!(status, 200);
    assert_eq!(image::load_from_memory(&shown).unwrap().to_rgb8(), img);
    let (status, _) = call(&server, "DELETE", &format!("/api/images/{id}"), None);
    assert_eq!(status, 204);
    let (status, _) = call_json(&server, "POST", &path, Some(body.to_string().as_bytes()));
    assert_eq!(status, 404);
}

fn write_volume(path: &Path, dims: [usize; 3]) -> NiftiVolume {
    let (values, _) = msa::data::synthetic::blob_volume(dims, 7);
    let volume = Volume {
        dims,
        data: values,
        spacing: [0.8, 0.9, 2.5],
        affine: [
            [-0.8, 0.0, 0.0, 10.0],
            [0.0, 0.9, 0.0, -20.0],
            [0.0, 0.0, 2.5, 5.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    };
    let v = NiftiVolume::from_volume(volume);
    nifti::write_image(path, &v).unwrap();
    v
}

#[test]
fn volumes_propagate_and_download_as_predict_volume_writes_them() {
    let server = serve(Settings::default());
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ct.nii.gz");
    let written = write_volume(&input, [40, 36, 9]);
    let info = upload(&server, &std::fs::read(&input).unwrap());
    assert_eq!(
        (&info["width"], &info["height"], &info["slices"]),
        (&json!(40), &json!(36), &json!(9))
    );
    let id = info["id"].as_str().unwrap();
    let (status, one) = call_json(
        &server,
        "POST",
        &format!("/api/images/{id}/predict"),
        Some(
            json!({"points": [[12, 14, 1]], "slice": 4})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(status, 200, "{one}");
    assert_eq!(decode_mask(&one).dimensions(), (40, 36));

    let (status, _) = call_json(
        &server,
        "GET",
        &format!("/api/images/{id}/segmentation.nii.gz"),
        None,
    );
    assert_eq!(status, 409, "nothing propagated yet");
    let prompts = json!({"classes": {
        "1": {"boxes": {"2": [4, 5, 20, 22], "6": [8, 9, 24, 26]}, "interpolate_boxes": true},
        "2": {"points": {"4": [[30, 20, 1]]}}
    }});
    let (status, out) = call_json(
        &server,
        "POST",
        &format!("/api/images/{id}/propagate"),
        Some(json!({"prompts": prompts}).to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["slices"], json!([2, 3, 4, 5, 6]));
    let (status, png) = call(&server, "GET", &format!("/api/images/{id}/labels/4"), None);
    assert_eq!(status, 200);
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 40);
    let (status, seg) = call(
        &server,
        "GET",
        &format!("/api/images/{id}/segmentation.nii.gz"),
        None,
    );
    assert_eq!(status, 200);
    let served = dir.path().join("served.nii.gz");
    std::fs::write(&served, seg).unwrap();
    let served = nifti::read(&served).unwrap();
    assert_eq!(served.volume.dims, [40, 36, 9]);
    assert_eq!(served.volume.affine, written.volume.affine);

    // `msa predict-volume` with the same prompt file writes the same labels.
    let cli = cli_predict_volume(&input, &prompts, None, dir.path());
    assert_eq!(cli, served.volume.data);
    let counted: usize = out["voxels"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap() as usize)
        .sum();
    assert_eq!(
        counted,
        served.volume.data.iter().filter(|&&v| v > 0.0).count()
    );
}

/// A DICOM series of 6 slices (24 x 20) with a bright block, in nested folders.
fn write_series(dir: &Path) {
    use msa::data::synthetic_dicom::{write_image, Plane};
    let (rows, columns) = (20, 24);
    for k in 0..6 {
        let pixels: Vec<u16> = (0..rows * columns)
            .map(|i| {
                let (r, c) = (i / columns, i % columns);
                if (5..15).contains(&r) && (6..18).contains(&c) {
                    900
                } else {
                    500 + (r + c) as u16
                }
            })
            .collect();
        let plane = Plane {
            position: [-10.0, 20.0, 2.5 * k as f64],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        };
        let file = dir.join(format!("part{}/im{k}.dcm", k % 2));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        write_image(&file, "1.2.3.77", k, plane, (rows, columns), &pixels).unwrap();
    }
}

fn zip_folder(dir: &Path) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for part in ["part0", "part1"] {
        for entry in std::fs::read_dir(dir.join(part)).unwrap() {
            let path = entry.unwrap().path();
            let name = format!(
                "study/{part}/{}",
                path.file_name().unwrap().to_string_lossy()
            );
            zip.start_file(name, options).unwrap();
            zip.write_all(&std::fs::read(&path).unwrap()).unwrap();
        }
    }
    zip.finish().unwrap().into_inner()
}

#[test]
fn a_zipped_dicom_series_uploads_and_downloads_as_dicom_seg() {
    let server = serve(Settings::default());
    let dir = tempfile::tempdir().unwrap();
    let series = dir.path().join("series");
    write_series(&series);
    let info = upload(&server, &zip_folder(&series));
    assert_eq!(
        (
            &info["width"],
            &info["height"],
            &info["slices"],
            &info["dicom"]
        ),
        (&json!(24), &json!(20), &json!(6), &json!(true)),
        "{info}"
    );
    let id = info["id"].as_str().unwrap();
    let prompts = json!({"classes": {"1": {"box3d": [5, 4, 1, 19, 16, 4]}}});
    let (status, out) = call_json(
        &server,
        "POST",
        &format!("/api/images/{id}/propagate"),
        Some(json!({"prompts": prompts}).to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{out}");
    let (status, nii) = call(
        &server,
        "GET",
        &format!("/api/images/{id}/segmentation.nii.gz"),
        None,
    );
    assert_eq!(status, 200);
    let (status, dcm) = call(
        &server,
        "GET",
        &format!("/api/images/{id}/segmentation.dcm"),
        None,
    );
    assert_eq!(status, 200);
    std::fs::write(dir.path().join("served.nii.gz"), nii).unwrap();
    std::fs::write(dir.path().join("served.dcm"), dcm).unwrap();
    let labels: Vec<u8> = nifti::read(&dir.path().join("served.nii.gz"))
        .unwrap()
        .volume
        .data
        .iter()
        .map(|&v| v as u8)
        .collect();
    assert!(labels.contains(&1));
    let (volume, source) = msa::io::dicom::read_source(&series, None).unwrap();
    let from_seg =
        msa::io::dicom::seg_labels::read(&dir.path().join("served.dcm"), &source, volume.dims)
            .unwrap();
    assert_eq!(from_seg, labels);
    // `msa predict-volume` on the unzipped series writes the same labels.
    let cli = cli_predict_volume(&series, &prompts, None, dir.path());
    assert_eq!(cli.iter().map(|&v| v as u8).collect::<Vec<_>>(), labels);
    // A 2D upload has no SEG; neither has a NIfTI volume.
    let nii_info = upload(
        &server,
        &std::fs::read(dir.path().join("served.nii.gz")).unwrap(),
    );
    let (status, _) = call(
        &server,
        "GET",
        &format!(
            "/api/images/{}/segmentation.dcm",
            nii_info["id"].as_str().unwrap()
        ),
        None,
    );
    assert_eq!(status, 400);
}

/// The answer to an upload announcing `len` bytes, read before any body byte is sent: a
/// server must refuse by the announced length, not after reading it all.
fn over_the_limit(server: &Running, len: usize) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /api/images HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[test]
fn hostile_input_gets_4xx_and_the_server_keeps_serving() {
    let settings = Settings {
        max_upload_bytes: 2 << 20,
        ..Settings::default()
    };
    let server = serve(settings);
    let png = disk_png(64, 48);
    let refused = |bytes: &[u8], what: &str| -> String {
        let (status, v) = call_json(&server, "POST", "/api/images", Some(bytes));
        assert!((400..500).contains(&status), "{what}: {status} {v}");
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {v}"))
            .to_string()
    };
    let e = refused(&png[..png.len() / 2], "truncated PNG");
    assert!(e.contains("truncated PNG"), "{e}");
    let e = refused(&png_claiming(20_000, 20_000), "20000x20000 PNG header");
    assert!(e.contains("20000x20000") && e.contains("limit"), "{e}");
    let e = refused(b"%PDF-1.7 this is not an image at all", "non-image");
    assert!(e.contains("not a PNG"), "{e}");
    let e = refused(&nifti_claiming([30_000, 30_000, 30_000]), "NIfTI bomb");
    assert!(e.contains("limit"), "{e}");
    let e = refused(&nifti_claiming([64, 64, 10]), "NIfTI without voxels");
    assert!(e.contains("holds"), "{e}");
    let e = over_the_limit(&server, 3 << 20);
    assert!(
        e.starts_with("HTTP/1.1 413") && e.contains("length limit"),
        "{e}"
    );
    let e = refused(&[], "empty");
    assert!(e.contains("empty"), "{e}");

    let id = upload(&server, &png)["id"].as_str().unwrap().to_string();
    let predict = |body: &str| {
        call_json(
            &server,
            "POST",
            &format!("/api/images/{id}/predict"),
            Some(body.as_bytes()),
        )
    };
    for (body, status, needle) in [
        ("{\"points\": [[10, 10, 1]", 422, "bad JSON"),
        ("[1, 2, 3]", 422, "bad JSON"),
        ("{\"points\": [[\"x\", 10, 1]]}", 422, "bad JSON"),
        (
            "{\"points\": [[640, 10, 1]]}",
            400,
            "outside the 64x48 image",
        ),
        ("{\"points\": [[-1, 10, 1]]}", 400, "outside"),
        ("{\"box\": [30, 30, 10, 10]}", 400, "x0 < x1"),
        ("{\"points\": [[10, 10, 3]]}", 400, "label 3"),
        ("{\"points\": []}", 400, "at least one point"),
        ("{\"points\": [[10, 10, 1]], \"slice\": 3}", 400, "slice 3"),
        (
            "{\"points\": [[10, 10, 1]], \"adapters\": \"nope\"}",
            400,
            "unknown adapters",
        ),
        (
            "{\"points\": [[10, 10, 1]], \"model\": \"nope\"}",
            400,
            "unknown model",
        ),
    ] {
        let (got, v) = predict(body);
        assert_eq!(got, status, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    let (status, v) = call_json(
        &server,
        "POST",
        "/api/images/0123456789abcdef/predict",
        Some(b"{}"),
    );
    assert_eq!(status, 404, "{v}");
    let (status, v) = call_json(&server, "GET", &format!("/api/images/{id}/slices/x"), None);
    assert_eq!(status, 400, "{v}");
    let (status, v) = call_json(
        &server,
        "POST",
        &format!("/api/images/{id}/propagate"),
        Some(b"{\"prompts\": {\"classes\": {}}}"),
    );
    assert_eq!(status, 400, "{v}");
    let (status, _) = call_json(&server, "GET", "/etc/passwd", None);
    assert_eq!(status, 404);
    let (status, _) = call_json(
        &server,
        "GET",
        "/api/images/..%2F..%2Fetc%2Fpasswd/slices/0",
        None,
    );
    assert_eq!(status, 404);

    // 50 requests at once all succeed and agree.
    let body = json!({"points": [[30, 25, 1]]}).to_string();
    let masks: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                s.spawn(|| {
                    call_json(
                        &server,
                        "POST",
                        &format!("/api/images/{id}/predict"),
                        Some(body.as_bytes()),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, v) = h.join().unwrap();
                assert_eq!(status, 200, "{v}");
                v
            })
            .collect()
    });
    assert!(masks
        .iter()
        .all(|m| m["mask_png_base64"] == masks[0]["mask_png_base64"]));
    let (status, _) = call_json(&server, "GET", "/api/health", None);
    assert_eq!(status, 200);
}

#[test]
fn images_are_bounded_in_number_and_time() {
    let server = serve(Settings {
        max_images: 2,
        ..Settings::default()
    });
    let png = disk_png(20, 20);
    let ids: Vec<String> = (0..3)
        .map(|_| upload(&server, &png)["id"].as_str().unwrap().to_string())
        .collect();
    let status = |id: &str| call(&server, "GET", &format!("/api/images/{id}"), None).0;
    assert_eq!(status(&ids[0]), 404, "the least recently used went first");
    assert_eq!((status(&ids[1]), status(&ids[2])), (200, 200));

    let server = serve(Settings {
        image_timeout: std::time::Duration::from_millis(300),
        ..Settings::default()
    });
    let id = upload(&server, &png)["id"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1600));
    assert_eq!(
        call(&server, "GET", &format!("/api/images/{id}"), None).0,
        404
    );
}

#[test]
fn a_token_is_required_off_loopback_and_checked() {
    let open = Settings {
        host: "0.0.0.0".parse().unwrap(),
        ..Settings::default()
    };
    let e = open.check().unwrap_err().to_string();
    assert!(e.contains("--token"), "{e}");
    let server = serve(Settings {
        token: Some("s3cret".into()),
        ..Settings::default()
    });
    assert_eq!(call(&server, "GET", "/api/health", None).0, 200);
    assert_eq!(call(&server, "GET", "/api/models", None).0, 401);
    assert_eq!(call(&server, "GET", "/", None).0, 401);
    let url = format!("{}/api/models", server.url());
    let with = |header: &str, value: &str| {
        agent()
            .get(&url)
            .header(header, value)
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(with("Authorization", "Bearer s3cret"), 200);
    assert_eq!(with("Authorization", "Bearer wrong"), 401);
    assert_eq!(with("Cookie", "msa_token=s3cret"), 200);
    let page = agent()
        .get(format!("{}/?token=s3cret", server.url()))
        .call()
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let cookie = page.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        cookie.starts_with("msa_token=s3cret") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
}

/// Decoder adapters for sam_tiny with random non-zero weights, saved with metadata for
/// `base`; `sha` overrides the base's SHA-256 (to make a file for another base).
fn write_adapters(base: &Path, file: &Path, sha: Option<&str>) {
    let ad = msa::model::AdapterConfig {
        decoder: true,
        ..Default::default()
    };
    write_adapter_config(base, file, sha, ad);
}

fn write_adapter_config(
    base: &Path,
    file: &Path,
    sha: Option<&str>,
    ad: msa::model::AdapterConfig,
) {
    use msa::weights::adapter_file::{self, AdapterMeta, FORMAT};
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let opts = msa::weights::LoadOptions {
        config: Some(&cfg),
        adapters: Some(ad.clone()),
        train: true,
        seed: 3,
        ..Default::default()
    };
    let loaded = msa::weights::load_model(base, &opts, &candle_core::Device::Cpu).unwrap();
    let tensors: std::collections::BTreeMap<String, candle_core::Tensor> = loaded
        .params
        .trainables()
        .into_iter()
        .map(|(k, v)| {
            let t = v.as_tensor();
            (k, (t + t.randn_like(0.0, 0.2).unwrap()).unwrap())
        })
        .collect();
    let meta = AdapterMeta {
        format: FORMAT.into(),
        base_preset: loaded.preset.clone(),
        base_backbone: "vit".into(),
        preprocess: Some(cfg.preprocess),
        base_sha256: sha.map_or_else(|| adapter_file::sha256_file(base).unwrap(), str::to_string),
        adapters: ad,
        image_size: cfg.img_size,
        training: json!({}),
        tool_version: "test".into(),
    };
    adapter_file::save(file, &tensors, &meta).unwrap();
}

#[test]
fn adapter_files_are_offered_on_their_base_and_used_when_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run1");
    std::fs::create_dir_all(&run).unwrap();
    let (base, file) = (
        fixture("sam_tiny.pth"),
        run.join("adapters_best.safetensors"),
    );
    write_adapters(&base, &file, None);
    let cfg = SamConfig::from_json_file(&fixture("sam_tiny.json")).unwrap();
    let wrong = dir.path().join("other.safetensors");
    write_adapters(&base, &wrong, Some("00"));
    let e = ModelSet::load(
        std::slice::from_ref(&base),
        &[wrong],
        &LoadOptions {
            config: Some(&cfg),
            ..Default::default()
        },
        &candle_core::Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("other.safetensors") && e.contains("fits none"),
        "{e}"
    );

    let server = serve_with_adapters(&file);
    let (_, listed) = call_json(&server, "GET", "/api/models", None);
    assert_eq!(
        listed["adapters"][0]["name"], "run1/adapters_best",
        "{listed}"
    );
    assert_eq!(listed["adapters"][0]["base"], "sam_tiny");
    let png = disk_png(80, 60);
    let id = upload(&server, &png)["id"].as_str().unwrap().to_string();
    let path = format!("/api/images/{id}/predict");
    let ask = |adapters: Value| {
        let body = json!({"points": [[40, 30, 1]], "adapters": adapters});
        let (status, v) = call_json(&server, "POST", &path, Some(body.to_string().as_bytes()));
        assert_eq!(status, 200, "{v}");
        v
    };
    let plain = ask(Value::Null);
    let adapted = ask(json!("run1/adapters_best"));
    assert_ne!(
        plain["iou"], adapted["iou"],
        "the adapters change the decoder"
    );

    let (image_path, out) = (dir.path().join("disk.png"), dir.path().join("mask.png"));
    std::fs::write(&image_path, &png).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_msa"))
        .args(["predict", "--checkpoint"])
        .arg(&base)
        .arg("--config")
        .arg(fixture("sam_tiny.json"))
        .arg("--adapters")
        .arg(&file)
        .args(["--image"])
        .arg(&image_path)
        .args(["--point", "40,30,1", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(image::open(&out).unwrap().to_luma8(), decode_mask(&adapted));
}

#[test]
fn depth_adapters_encode_a_volume_chunk_once_and_propagate_like_predict_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (base, file) = (
        fixture("sam_tiny.pth"),
        dir.path().join("depth.safetensors"),
    );
    let ad = msa::model::AdapterConfig {
        encoder: true,
        depth: true,
        depth_chunk: 4,
        ..Default::default()
    };
    write_adapter_config(&base, &file, None, ad);
    let server = serve_with_adapters(&file);
    let (_, listed) = call_json(&server, "GET", "/api/models", None);
    assert_eq!(listed["adapters"][0]["depth_chunk"], 4, "{listed}");
    let name = listed["adapters"][0]["name"].as_str().unwrap().to_string();
    let input = dir.path().join("mr.nii.gz");
    write_volume(&input, [32, 30, 10]);
    let id = upload(&server, &std::fs::read(&input).unwrap())["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/images/{id}/predict");
    let ask = |slice: usize| {
        let body = json!({"points": [[10, 12, 1]], "slice": slice, "adapters": name});
        let (status, v) = call_json(&server, "POST", &path, Some(body.to_string().as_bytes()));
        assert_eq!(status, 200, "{v}");
        v["encoded"].as_bool().unwrap()
    };
    // Chunks of 4 over 10 slices: 0-3, 4-7, 6-9 (owning 8 and 9).
    assert!(ask(5), "slice 5 encodes its chunk");
    assert!(!ask(7) && !ask(4), "the chunk's other slices come with it");
    assert!(ask(9));
    assert!(!ask(8));

    let prompts = json!({"classes": {"1": {"boxes": {"3": [4, 5, 20, 22], "8": [6, 6, 24, 25]},
                                          "interpolate_boxes": true}}});
    let body = json!({"prompts": prompts, "adapters": name});
    let (status, out) = call_json(
        &server,
        "POST",
        &format!("/api/images/{id}/propagate"),
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{out}");
    let (_, seg) = call(
        &server,
        "GET",
        &format!("/api/images/{id}/segmentation.nii.gz"),
        None,
    );
    let served = dir.path().join("served.nii.gz");
    std::fs::write(&served, seg).unwrap();
    let cli = cli_predict_volume(&input, &prompts, Some(&file), dir.path());
    assert_eq!(cli, nifti::read(&served).unwrap().volume.data);
}

#[test]
fn every_image_kind_uploads_at_its_size() {
    let server = serve(Settings::default());
    let encode = |img: image::DynamicImage, format: image::ImageFormat| {
        let mut out = std::io::Cursor::new(vec![]);
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let gray16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(33, 21, |x, y| {
        image::Luma([(x * 900 + y * 40) as u16])
    });
    let rgb = image::RgbImage::from_fn(30, 20, |x, y| image::Rgb([x as u8 * 8, y as u8 * 9, 77]));
    for (bytes, what, size) in [
        (
            encode(gray16.clone().into(), image::ImageFormat::Png),
            "16-bit PNG",
            (33, 21),
        ),
        (
            encode(gray16.into(), image::ImageFormat::Tiff),
            "16-bit TIFF",
            (33, 21),
        ),
        (
            encode(rgb.clone().into(), image::ImageFormat::Jpeg),
            "JPEG",
            (30, 20),
        ),
        (encode(rgb.into(), image::ImageFormat::Bmp), "BMP", (30, 20)),
    ] {
        let info = upload(&server, &bytes);
        assert_eq!(
            (
                info["width"].as_u64(),
                info["height"].as_u64(),
                info["slices"].as_u64()
            ),
            (Some(size.0), Some(size.1), Some(1)),
            "{what}: {info}"
        );
        let id = info["id"].as_str().unwrap();
        let body = json!({"box": [2, 2, 15, 12]}).to_string();
        let (status, v) = call_json(
            &server,
            "POST",
            &format!("/api/images/{id}/predict"),
            Some(body.as_bytes()),
        );
        assert_eq!(status, 200, "{what}: {v}");
        assert_eq!(
            decode_mask(&v).dimensions(),
            (size.0 as u32, size.1 as u32),
            "{what}"
        );
    }
}

#[test]
fn the_served_precision_is_reported_and_masks_equal_predict_at_that_precision() {
    let dir = tempfile::tempdir().unwrap();
    let png = disk_png(90, 70);
    let image_path = dir.path().join("disk.png");
    std::fs::write(&image_path, &png).unwrap();
    let body = json!({"points": [[40, 38, 1]], "box": [20, 15, 70, 60], "slice": 0});
    let prompts_path = dir.path().join("prompts.json");
    let file = json!({"points": body["points"], "box": body["box"]});
    std::fs::write(&prompts_path, file.to_string()).unwrap();
    let mut masks = vec![];
    for (dtype, name) in [
        (candle_core::DType::F16, "f16"),
        (candle_core::DType::F32, "f32"),
    ] {
        let server = serve_in(dtype);
        let (_, models) = call_json(&server, "GET", "/api/models", None);
        assert_eq!(models["models"][0]["precision"], name, "{models}");
        let id = upload(&server, &png)["id"].as_str().unwrap().to_string();
        let path = format!("/api/images/{id}/predict");
        let (status, got) = call_json(&server, "POST", &path, Some(body.to_string().as_bytes()));
        assert_eq!(status, 200, "{got}");
        let mask = decode_mask(&got);
        let out = dir.path().join(format!("mask-{name}.png"));
        let cli = cli_predict(&image_path, &prompts_path, &out, name);
        assert_eq!(cli, mask, "{name}: serve and predict");
        masks.push(mask);
    }
    let differ = masks[0]
        .pixels()
        .zip(masks[1].pixels())
        .filter(|(a, b)| a != b)
        .count();
    eprintln!("f16 and f32 masks differ in {differ} of {} pixels", 90 * 70);
}
