//! The HTTP routes: the page, and the JSON API it uses (documented in the README). Model
//! work runs on blocking threads; every failure is a JSON error.

use super::error::ApiError;
use super::models::ServedModel;
use super::segment::{self, PredictRequest, PropagateRequest};
use super::store::{lock_entry, Content, ImageEntry};
use super::ServerState;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::{Arc, Mutex};

type AppState = Arc<ServerState>;
type ApiResult<T> = Result<T, ApiError>;

/// Most bytes of a JSON request body.
const MAX_JSON_BYTES: usize = 8 << 20;

pub fn router(state: AppState) -> Router {
    let upload_limit = state.settings.max_upload_bytes;
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/api/health", get(health))
        .route("/api/models", get(models))
        .route(
            "/api/images",
            post(upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/api/images/{id}", get(describe).delete(remove))
        .route("/api/images/{id}/slices/{k}", get(slice_png))
        .route("/api/images/{id}/predict", post(predict))
        .route("/api/images/{id}/propagate", post(propagate))
        .route("/api/images/{id}/labels/{k}", get(labels_png))
        .route("/api/images/{id}/segmentation.nii.gz", get(segmentation))
        .route("/api/images/{id}/segmentation.dcm", get(segmentation_seg))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        super::page::INDEX_HTML,
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        super::page::APP_JS,
    )
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn models(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "models": state.models.bases,
        "adapters": state.models.adapters,
    }))
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    /// A volume's intensity scaling, as `predict-volume --window` takes it.
    window: Option<String>,
    /// The series of a zipped DICOM study, by number or UID.
    series: Option<String>,
}

async fn upload(
    State(state): State<AppState>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let bytes = upload_bytes(&headers, body, state.settings.max_upload_bytes).await?;
    let limits = state.settings.decode;
    let content = blocking(&state, move || {
        segment::decode_upload(&bytes, q.window.as_deref(), q.series.as_deref(), &limits)
    })
    .await?;
    let mut info = content_info(&content);
    let id = state.store.insert(content);
    info.insert("id".into(), id.into());
    Ok(Json(info.into()))
}

fn content_info(content: &Content) -> serde_json::Map<String, serde_json::Value> {
    let (w, h, n) = content.size();
    let mut v = serde_json::Map::new();
    v.insert("width".into(), w.into());
    v.insert("height".into(), h.into());
    v.insert("slices".into(), n.into());
    if let Content::Volume {
        volume,
        intensity,
        dicom,
        ..
    } = content
    {
        v.insert("spacing".into(), serde_json::json!(volume.volume.spacing));
        v.insert("intensity".into(), intensity.clone().into());
        v.insert("axis".into(), "axial".into());
        v.insert("dicom".into(), dicom.is_some().into());
    }
    v
}

async fn describe(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let entry = find(&state, &id)?;
    let entry = lock_entry(&entry);
    let mut info = content_info(&entry.content);
    info.insert("id".into(), id.into());
    info.insert("has_labels".into(), entry.labels.is_some().into());
    Ok(Json(info.into()))
}

async fn remove(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    match state.store.remove(&id) {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(unknown_image(&id)),
    }
}

async fn slice_png(
    State(state): State<AppState>,
    Path((id, k)): Path<(String, String)>,
) -> ApiResult<Response> {
    render_slice(state, &id, &k, |entry, k| {
        segment::rgb_png(&entry.content.slice_rgb(k)?)
    })
    .await
}

async fn predict(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<segment::PredictResponse>> {
    let req: PredictRequest = json_body(body)?;
    let choice = (req.model.clone(), req.adapters.clone());
    on_model(state, &id, choice, move |entry, model| {
        segment::predict(entry, model, &req)
    })
    .await
    .map(Json)
}

async fn propagate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<segment::PropagateResponse>> {
    let req: PropagateRequest = json_body(body)?;
    let choice = (req.model.clone(), req.adapters.clone());
    on_model(state, &id, choice, move |entry, model| {
        segment::propagate(&mut lock_entry(entry), model, &req)
    })
    .await
    .map(Json)
}

/// Runs `work` on image `id` with the model a request chose as (model, adapters).
async fn on_model<T: Send + 'static>(
    state: AppState,
    id: &str,
    (model, adapters): (Option<String>, Option<String>),
    work: impl FnOnce(&Mutex<ImageEntry>, &ServedModel) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let entry = find(&state, id)?;
    let models = state.clone();
    blocking(&state, move || {
        let model = models
            .models
            .find(model.as_deref(), adapters.as_deref())
            .map_err(ApiError::bad_input)?;
        work(&entry, model)
    })
    .await
}

async fn labels_png(
    State(state): State<AppState>,
    Path((id, k)): Path<(String, String)>,
) -> ApiResult<Response> {
    render_slice(state, &id, &k, |entry, k| {
        let (w, h, _) = entry.content.size();
        let labels = entry.labels.as_deref().ok_or_else(no_labels)?;
        segment::labels_png(labels, w, h, k)
    })
    .await
}

/// A PNG of slice `k` of image `id`, drawn by `render`.
async fn render_slice(
    state: AppState,
    id: &str,
    k: &str,
    render: impl FnOnce(&ImageEntry, usize) -> ApiResult<Vec<u8>> + Send + 'static,
) -> ApiResult<Response> {
    let entry = find(&state, id)?;
    let k = slice_index(k)?;
    let png = blocking(&state, move || {
        let entry = lock_entry(&entry);
        check_slice(&entry, k)?;
        render(&entry, k)
    })
    .await?;
    Ok(png_response(png))
}

async fn segmentation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let entry = find(&state, &id)?;
    let bytes = blocking(&state, move || {
        let entry = lock_entry(&entry);
        let Content::Volume { turn, grid, .. } = &entry.content else {
            return Err(ApiError::bad_request(
                "a 2D image has no NIfTI segmentation; save its mask PNG",
            ));
        };
        let labels = entry.labels.as_deref().ok_or_else(no_labels)?;
        super::nifti_bytes(&turn.undo(labels), grid).map_err(ApiError::from)
    })
    .await?;
    Ok(attachment(bytes, "application/gzip", "segmentation.nii.gz"))
}

/// The propagated labels as a DICOM Segmentation of the uploaded DICOM series, one
/// segment per label present.
async fn segmentation_seg(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let entry = find(&state, &id)?;
    let bytes = blocking(&state, move || {
        let entry = lock_entry(&entry);
        let Content::Volume {
            turn,
            grid,
            dicom: Some(dicom),
            ..
        } = &entry.content
        else {
            return Err(ApiError::bad_request(
                "a DICOM SEG refers to DICOM source images; upload a DICOM series (zipped) \
                 or download the NIfTI segmentation",
            ));
        };
        let labels = turn.undo(entry.labels.as_deref().ok_or_else(no_labels)?);
        super::seg_bytes(&labels, &grid.volume, &dicom.source).map_err(ApiError::from)
    })
    .await?;
    Ok(attachment(bytes, "application/dicom", "segmentation.dcm"))
}

/// A file download: its bytes, type and the name a browser saves it under.
fn attachment(bytes: Vec<u8>, content_type: &'static str, name: &str) -> Response {
    let disposition = format!("attachment; filename=\"{name}\"");
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see the API in the README")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method",
    )
}

fn no_labels() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "nothing propagated yet: POST prompts to /propagate first",
    )
}

fn find(state: &ServerState, id: &str) -> ApiResult<Arc<Mutex<ImageEntry>>> {
    state.store.get(id).ok_or_else(|| unknown_image(id))
}

fn unknown_image(id: &str) -> ApiError {
    let shown: String = id.chars().take(40).collect();
    ApiError::not_found(format!(
        "no image `{shown}`: unknown, or dropped after its time-out or for newer uploads; upload it again"
    ))
}

fn slice_index(k: &str) -> ApiResult<usize> {
    let k = k.strip_suffix(".png").unwrap_or(k);
    k.parse()
        .map_err(|_| ApiError::bad_request(format!("slice `{k}` is not an index")))
}

fn check_slice(entry: &ImageEntry, k: usize) -> ApiResult<()> {
    let (_, _, n) = entry.content.size();
    match k < n {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "slice {k} is outside the image's {n} slice(s)"
        ))),
    }
}

/// The upload's bytes, refused by its announced length before any is read, and bounded
/// while reading when no length is announced.
async fn upload_bytes(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    let too_large = |n: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the upload is {n} bytes; this server's length limit is {limit} bytes (--max-upload-mib)"),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced.filter(|&n| n > limit as u64) {
        return Err(too_large(n.to_string()));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large("more than that".into()))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|r| ApiError::new(r.status(), r.body_text()))
}

fn json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body_bytes(body)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("bad JSON body: {e}"),
        )
    })
}

fn png_response(png: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/png")], png).into_response()
}

/// Runs model or codec work off the async threads, as many at a time as the server has
/// workers; the rest queue in arrival order.
async fn blocking<T: Send + 'static>(
    state: &ServerState,
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let _permit = state
        .workers
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the server is stopping"))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the request's worker failed: {e}")))?
}
