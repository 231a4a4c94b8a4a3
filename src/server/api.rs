//! Routes, handlers and the OpenAPI document.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Multipart, Path as UrlPath, Query, Request, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::{ApiError, Engine, State};
use crate::joint::space::{Side, TagClass, TagWord, Tags};
use crate::query::{self, Hit, SearchAnswer, Space};

type AppState = Arc<State>;
type ApiResult<T> = Result<T, ApiError>;

/// The page at `/`.
const PAGE: &str = include_str!("page.html");
/// Longest side of a thumbnail, pixels.
const THUMB_SIZE: u32 = 256;
/// Largest `k` a request may ask for.
const MAX_K: usize = 1000;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "imgsearch",
        description = "Semantic image search: by image, by words, class-weighted; tags; word neighbours."
    ),
    paths(
        search_get,
        search_post,
        tags_get,
        tags_post,
        words,
        classes,
        status,
        add_image,
        add_image_by_path,
        image_info,
        list_images,
        delete_image,
        thumbnail,
        original,
        healthz,
        readyz,
        metrics_text
    ),
    components(schemas(
        SearchAnswer,
        Hit,
        Space,
        Tags,
        TagWord,
        TagClass,
        Side,
        crate::words::Neighbour,
        ClassOut,
        StatusOut,
        ImageOut,
        ImagePage,
        AddByPath,
        SearchForm,
        TagForm,
        AddForm,
        ErrorOut
    )),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

/// The bearer token scheme, required on the routes that change the index
/// when the server has a token.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/images") {
                continue;
            }
            for op in [item.post.as_mut(), item.delete.as_mut()].into_iter().flatten() {
                op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
            }
        }
    }
}

/// The router over `state`, without a socket (tests call it directly).
pub fn app(state: AppState) -> Router {
    let mutating = Router::new()
        .route("/api/images", get(list_images).post(add_image))
        .route("/api/images/by-path", post(add_image_by_path))
        .route("/api/images/{key}", axum::routing::delete(delete_image))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/api/status", get(status))
        .route("/api/search", get(search_get).post(search_post))
        .route("/api/tags", get(tags_get).post(tags_post))
        .route("/api/words", get(words))
        .route("/api/classes", get(classes))
        .route("/api/images/{key}", get(image_info))
        .route("/api/images/{key}/thumbnail", get(thumbnail))
        .route("/api/images/{key}/original", get(original))
        .merge(mutating)
        .layer(middleware::from_fn_with_state(state.clone(), private_reads))
        .layer(DefaultBodyLimit::max(state.options.max_upload))
        .fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            ApiError::new(StatusCode::NOT_FOUND, format!("no such route: {method} {}", uri.path()))
        })
        .layer(middleware::from_fn(json_errors))
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts and times every request by its route pattern.
async fn track(Shared(state): Shared<AppState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let start = Instant::now();
    let response = next.run(req).await;
    let seconds = start.elapsed().as_secs_f64();
    state.metrics.record(&route, response.status().as_u16(), seconds);
    tracing::info!(%method, path, status = response.status().as_u16(), ms = format!("{:.2}", seconds * 1e3), "request");
    response
}

/// Every error answer is JSON (`{"error": ...}`), also those axum makes
/// itself (405, a bad query string, a bad multipart body, a body too large).
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    ApiError::new(status, message).into_response()
}

/// The host part of a `Host` value or an origin's authority, lower case, without the port.
fn host_name(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    match a.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or("")),
        None => a
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(a.clone(), |(h, _)| h.to_owned()),
    }
}

fn host_allowed(state: &State, authority: &str) -> bool {
    match &state.options.allowed_hosts {
        None => true,
        Some(hosts) => {
            let name = host_name(authority);
            hosts.iter().any(|h| host_name(h) == name)
        }
    }
}

/// Every request must be addressed to this server by one of its names: a
/// web page whose DNS name was rebound to 127.0.0.1 sends its own name.
async fn check_host(Shared(state): Shared<AppState>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host {
        if !host_allowed(&state, host) {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "this server does not answer to that host name; start it with --allow-host <name> to add one",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Mutating requests come from this server's own page (no foreign
/// `Origin`, no `Sec-Fetch-Site: cross-site`), and need
/// `Authorization: Bearer <token>` when a token is set.
async fn require_token(Shared(state): Shared<AppState>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD) {
        return next.run(req).await; // reading the list beside the writes
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let cross_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site");
    let foreign_origin = origin.is_some_and(|o| {
        let authority = o.split_once("://").map_or(o, |(_, a)| a);
        let same_as_host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|h| host_name(h) == host_name(authority));
        o == "null" || !(same_as_host || (state.options.allowed_hosts.is_some() && host_allowed(&state, authority)))
    });
    if cross_site || foreign_origin {
        return ApiError::new(StatusCode::FORBIDDEN, "a request from another site may not change the index")
            .into_response();
    }
    if let Some(token) = &state.options.token {
        if !has_token(&headers, token) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this request changes the index: send Authorization: Bearer <token>",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The cookie that carries the token for the page's own requests (images
/// cannot send an `Authorization` header).
const TOKEN_COOKIE: &str = "imgsearch_token";

/// Whether a request carries the token: `Authorization: Bearer`, or the cookie.
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='));
    bearer.into_iter().chain(cookie).any(|given| same_secret(given.as_bytes(), token.as_bytes()))
}

/// With `--private`, every route but the probes needs the token. The page
/// opened as `/?token=<token>` sets it as a same-site cookie and moves to `/`,
/// so the token leaves the address bar.
async fn private_reads(Shared(state): Shared<AppState>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let (true, Some(token)) = (state.options.private, state.options.token.as_deref()) else {
        return next.run(req).await;
    };
    if matches!(req.uri().path(), "/healthz" | "/readyz") || has_token(&headers, token) {
        return next.run(req).await;
    }
    let given = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("token="))
        .map(|t| percent_encoding::percent_decode_str(t).decode_utf8_lossy().into_owned());
    if req.uri().path() == "/" && given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
        let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000");
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/".to_owned()), (header::SET_COOKIE, cookie)])
            .into_response();
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "this server is private: open the page as /?token=<token>, or send Authorization: Bearer <token>",
    )
    .into_response()
}

/// Runs `f` on the blocking pool, or answers 503 when the queue is full.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&State) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let permit = state.queue.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is busy: too many requests queued; retry shortly")
    })?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(&state)
    })
    .await
    .map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed inside the server: {e}"))
    })?
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in another request must not take the index down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine for reading: searches run side by side.
fn read(engine: &std::sync::RwLock<Engine>) -> std::sync::RwLockReadGuard<'_, Engine> {
    engine.read().unwrap_or_else(|e| e.into_inner())
}

/// The engine for changing: adds and deletions run alone.
fn write(engine: &std::sync::RwLock<Engine>) -> std::sync::RwLockWriteGuard<'_, Engine> {
    engine.write().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- schemas

/// An error: what was wrong and what to do.
#[derive(Serialize, ToSchema)]
pub struct ErrorOut {
    pub error: String,
}

#[derive(Serialize, ToSchema)]
pub struct ClassOut {
    pub index: usize,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct StatusOut {
    pub images: usize,
    pub backbone: String,
    pub words: String,
    /// The joint model's labels, if one is trained.
    pub joint_labels: Option<Vec<String>>,
    /// The text side searches and tags use by default (zero-shot until a model is trained).
    pub text_side: Option<Side>,
    pub hnsw: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ImageOut {
    pub key: i64,
    pub label: String,
    pub file: String,
    pub thumbnail: String,
    pub original: String,
    /// Where the file is on the server (only from `GET /api/images/{key}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A page of the collection, most recently added first.
#[derive(Serialize, ToSchema)]
pub struct ImagePage {
    pub images: Vec<ImageOut>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<i64>,
    /// Images in the collection.
    pub total: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Images per page, 1-1000 (default 60).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

/// Search parameters (query string, or the fields of a multipart form).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// An indexed image's key.
    pub key: Option<i64>,
    /// Words or a sentence: `dog`, `cat sofa`, `cat -sofa`.
    pub text: Option<String>,
    /// An ImageNet class (index or name) to weight an image query by.
    pub class: Option<String>,
    /// How many results, 1-1000 (default 20).
    pub k: Option<usize>,
    /// Drop results farther than this (0-2).
    pub max_distance: Option<f32>,
    /// `cnn` (default for an image) or `joint`.
    pub space: Option<String>,
    /// Also tag the query image (nearest words and top ImageNet classes).
    pub tags: Option<bool>,
    /// `zero-shot`, `trained` or `fused` (default: fused once a model is trained, else zero-shot).
    pub text_side: Option<String>,
}

/// `POST /api/search`: an uploaded image and the fields of [`SearchParams`].
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct SearchForm {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    text: Option<String>,
    class: Option<String>,
    k: Option<usize>,
    max_distance: Option<f32>,
    space: Option<String>,
    tags: Option<bool>,
    text_side: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TagParams {
    pub key: Option<i64>,
    /// How many words, 1-1000 (default 10).
    pub k: Option<usize>,
    /// `zero-shot`, `trained` or `fused` (default: fused once a model is trained, else zero-shot).
    pub text_side: Option<String>,
}

#[allow(dead_code)]
#[derive(ToSchema)]
pub struct TagForm {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    k: Option<usize>,
    text_side: Option<String>,
}

/// `POST /api/images`: the image, and the label (folder) to file it under.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct AddForm {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    label: Option<String>,
}

/// A file on the server, under one of the indexed folders.
#[derive(Deserialize, ToSchema)]
pub struct AddByPath {
    pub path: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WordParams {
    /// Words: `said`, `king -man woman`.
    pub q: String,
    pub k: Option<usize>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClassParams {
    /// What is typed so far.
    pub q: String,
    pub n: Option<usize>,
}

// ---------------------------------------------------------------- helpers

fn check_k(k: Option<usize>, default: usize) -> ApiResult<usize> {
    let k = k.unwrap_or(default);
    if k == 0 || k > MAX_K {
        return Err(ApiError::bad_request(format!("k must be between 1 and {MAX_K}, got {k}")));
    }
    Ok(k)
}

fn image_out(key: i64, label: &str, path: &str) -> ImageOut {
    ImageOut {
        key,
        label: label.to_owned(),
        file: crate::files::text_to_path(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        thumbnail: format!("/api/images/{key}/thumbnail"),
        original: format!("/api/images/{key}/original"),
        path: None,
    }
}

/// An uploaded image, read from a multipart form with its other fields.
struct Form {
    image: Option<(Vec<u8>, String)>,
    fields: std::collections::HashMap<String, String>,
}

async fn read_form(mut multipart: Multipart) -> ApiResult<Form> {
    let mut form = Form { image: None, fields: Default::default() };
    let too_big = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(e.status(), format!("reading the upload: {}", e.body_text()))
    };
    while let Some(field) = multipart.next_field().await.map_err(too_big)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "image" {
            let file = field.file_name().unwrap_or("upload").to_owned();
            let bytes = field.bytes().await.map_err(too_big)?;
            form.image = Some((bytes.to_vec(), file));
        } else {
            let text = field.text().await.map_err(too_big)?;
            form.fields.insert(name, text);
        }
    }
    Ok(form)
}

fn field<T: std::str::FromStr>(form: &Form, name: &str) -> ApiResult<Option<T>> {
    match form.fields.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("field {name}: cannot read \"{v}\""))),
    }
}

/// The raw CNN embedding of an upload (decoded and checked in memory).
fn embed_upload(state: &State, bytes: &[u8], name: &str) -> ApiResult<Vec<f32>> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the uploaded image is empty"));
    }
    let shown = PathBuf::from(format!("upload \"{name}\""));
    Ok(lock(&state.embedder).embed_bytes(bytes, &shown)?.embedding)
}

fn stored_embedding(engine: &Engine, key: i64) -> ApiResult<Vec<f32>> {
    let r = engine
        .store
        .by_key(key)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no image with key {key}")))?;
    Ok(engine.store.embedding(&r)?)
}

fn text_side(requested: Option<&str>) -> ApiResult<Option<Side>> {
    match requested.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => Ok(Some(s.parse::<Side>().map_err(|e| ApiError::bad_request(e.to_string()))?)),
    }
}

/// The loaded text space (zero-shot at least).
fn space_of(engine: &Engine) -> ApiResult<&super::Joint> {
    engine.joint.as_ref().ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the text space is not loaded"))
}

fn tags_of(engine: &Engine, raw: &[f32], k: usize, side: Option<Side>) -> ApiResult<Tags> {
    let joint = space_of(engine)?;
    let side = joint.space.side(side)?;
    Ok(joint.space.tags(side, raw, k)?)
}

fn run_search(state: &State, p: SearchParams, upload: Option<(Vec<u8>, String)>) -> ApiResult<SearchAnswer> {
    let k = check_k(p.k, 20)?;
    if let Some(m) = p.max_distance {
        if !(0.0..=2.0).contains(&m) {
            return Err(ApiError::bad_request(format!("max_distance must be between 0 and 2, got {m}")));
        }
    }
    let text = p.text.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if p.key.is_some() && upload.is_some() {
        return Err(ApiError::bad_request("give either key or an uploaded image, not both"));
    }
    let asked = match p.space.as_deref() {
        None | Some("") => None,
        Some("cnn") => Some(Space::Cnn),
        Some("joint") => Some(Space::Joint),
        Some(other) => return Err(ApiError::bad_request(format!("space must be cnn or joint, got \"{other}\""))),
    };
    let parts = query::Parts {
        image: p.key.is_some() || upload.is_some(),
        text: text.is_some(),
        class: p.class.is_some(),
        space: asked,
    };
    let space = parts.space()?;
    let class_weights = match &p.class {
        Some(spec) => {
            let c = crate::backbone::resolve_class(spec)?;
            Some(
                lock(&state.embedder)
                    .model()
                    .class_weights()
                    .get(c)
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(crate::Error::from)?,
            )
        }
        None => None,
    };
    let uploaded = match &upload {
        Some((bytes, name)) => Some(embed_upload(state, bytes, name)?),
        None => None,
    };
    let requested_side = text_side(p.text_side.as_deref())?;
    // Another process (`index`, `train`) may have added images meanwhile.
    state.refresh_store()?;
    if space == Space::Joint || p.tags == Some(true) {
        // Another process may have trained a newer model meanwhile.
        state.refresh_model()?;
    }
    let engine = read(&state.engine);
    let image = match (uploaded, p.key) {
        (Some(e), _) => Some(e),
        (None, Some(key)) => Some(stored_embedding(&engine, key)?),
        (None, None) => None,
    };
    let joint = if space == Space::Joint { Some(space_of(&engine)?) } else { None };
    let assembled =
        query::assemble(space, image.clone(), text, class_weights, requested_side, joint.map(|j| &*j.space))?;
    let (joint_model, text_fingerprint) = match (joint, assembled.side) {
        (Some(j), Some(side)) => j.space.database_target(side)?,
        _ => (None, None),
    };
    let indexes = query::Indexes {
        store: engine.store.as_ref(),
        hnsw: engine.hnsw.as_ref(),
        joint: joint.zip(assembled.side).and_then(|(j, s)| j.vectors(s)),
        joint_model,
        text_fingerprint,
    };
    let found = query::search(&indexes, &assembled.query, k, p.max_distance)?;
    let mut answer = SearchAnswer::new(&assembled, found, |f| {
        let o = image_out(f.key, &f.label, &f.path);
        Hit {
            rank: f.rank,
            key: f.key,
            label: o.label,
            file: o.file,
            path: None,
            distance: f.distance,
            thumbnail: Some(o.thumbnail),
            original: Some(o.original),
        }
    });
    answer.tags = match &image {
        Some(img) if p.tags == Some(true) => Some(tags_of(&engine, img, 8, requested_side)?),
        _ => None,
    };
    Ok(answer)
}

/// After an image is added: extend the HNSW graph and the joint vectors
/// (embedded store), or give its content a joint embedding (database).
fn refresh(engine: &mut Engine, hash: &str) -> crate::Result<()> {
    if engine.store.as_postgres().is_some() {
        if let Some(joint) = &mut engine.joint {
            joint.update(engine.store.as_ref(), Some(&[hash.to_owned()]))?;
        }
        return Ok(());
    }
    engine.catch_up()
}

/// Keeps a label to one safe folder name.
fn clean_label(label: &str) -> String {
    // At most 64 characters: it becomes a folder name (a long one was a 500 naming a server path).
    let cleaned: String = label
        .trim()
        .chars()
        .take(64)
        .map(|c| if c.is_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '_') {
        "uploads".into()
    } else {
        cleaned
    }
}

// ---------------------------------------------------------------- handlers

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "ok", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers (a database may be down: 503 until it is back).
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready", body = String), (status = 503, body = ErrorOut)))]
async fn readyz(Shared(state): Shared<AppState>) -> ApiResult<&'static str> {
    blocking(&state, |st| {
        read(&st.engine).store.ping()?;
        Ok("ready")
    })
    .await
}

/// Prometheus metrics: request counts and latencies by route, index size.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", body = String)))]
async fn metrics_text(Shared(state): Shared<AppState>) -> ApiResult<Response> {
    let s = state.clone();
    let text = blocking(&state, move |st| {
        let engine = read(&st.engine);
        let images = engine.store.len()?;
        // A database keeps one vector per content; the embedded store counts its rows.
        let rows = engine.store.as_embedded().map_or(images as u64, |s| s.rows());
        Ok(s.metrics.render(images, rows, engine.joint.as_ref().is_some_and(|j| j.space.trained.is_some())))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The index's size and models.
#[utoipa::path(get, path = "/api/status", responses((status = 200, body = StatusOut)))]
async fn status(Shared(state): Shared<AppState>) -> ApiResult<Json<StatusOut>> {
    blocking(&state, |st| {
        let engine = read(&st.engine);
        Ok(Json(StatusOut {
            images: engine.store.len()?,
            backbone: st.options.backbone.name().to_owned(),
            words: crate::joint::WordsId::of(&st.words).to_string(),
            joint_labels: engine
                .joint
                .as_ref()
                .and_then(|j| j.space.trained.as_ref())
                .map(|(_, m)| m.info.labels.iter().map(|(l, _)| l.clone()).collect()),
            text_side: engine.joint.as_ref().and_then(|j| j.space.side(None).ok()),
            hnsw: engine.hnsw.is_some() || engine.store.as_postgres().is_some(),
        }))
    })
    .await
}

/// Search by an indexed image (`key`), by words (`text`), or both; class-weighted with `class`.
#[utoipa::path(get, path = "/api/search", params(SearchParams), responses(
    (status = 200, body = SearchAnswer), (status = 400, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, description = "needs a trained joint model", body = ErrorOut)))]
async fn search_get(Shared(state): Shared<AppState>, Query(p): Query<SearchParams>) -> ApiResult<Json<SearchAnswer>> {
    blocking(&state, move |st| run_search(st, p, None).map(Json)).await
}

/// Search by an uploaded image (multipart field `image`), optionally with text, class, k, max_distance, space.
#[utoipa::path(post, path = "/api/search", request_body(content = SearchForm, content_type = "multipart/form-data"), responses(
    (status = 200, body = SearchAnswer), (status = 400, body = ErrorOut), (status = 413, body = ErrorOut)))]
async fn search_post(Shared(state): Shared<AppState>, multipart: Multipart) -> ApiResult<Json<SearchAnswer>> {
    let form = read_form(multipart).await?;
    let p = SearchParams {
        key: field(&form, "key")?,
        text: field(&form, "text")?,
        class: field(&form, "class")?,
        k: field(&form, "k")?,
        max_distance: field(&form, "max_distance")?,
        space: field(&form, "space")?,
        tags: field(&form, "tags")?,
        text_side: field(&form, "text_side")?,
    };
    let image = form.image;
    blocking(&state, move |st| run_search(st, p, image).map(Json)).await
}

/// The nearest words of the whole vocabulary to an indexed image.
#[utoipa::path(get, path = "/api/tags", params(TagParams), responses((status = 200, body = Tags), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)))]
async fn tags_get(Shared(state): Shared<AppState>, Query(p): Query<TagParams>) -> ApiResult<Json<Tags>> {
    let k = check_k(p.k, 10)?;
    let key = p.key.ok_or_else(|| ApiError::bad_request("give key (or POST an image)"))?;
    let side = text_side(p.text_side.as_deref())?;
    blocking(&state, move |st| {
        st.refresh_store()?;
        st.refresh_model()?;
        let engine = read(&st.engine);
        let raw = stored_embedding(&engine, key)?;
        tags_of(&engine, &raw, k, side).map(Json)
    })
    .await
}

/// The nearest words to an uploaded image (multipart field `image`).
#[utoipa::path(post, path = "/api/tags", request_body(content = TagForm, content_type = "multipart/form-data"), responses((status = 200, body = Tags), (status = 400, body = ErrorOut), (status = 409, body = ErrorOut)))]
async fn tags_post(Shared(state): Shared<AppState>, multipart: Multipart) -> ApiResult<Json<Tags>> {
    let form = read_form(multipart).await?;
    let k = check_k(field(&form, "k")?, 10)?;
    let side = text_side(field::<String>(&form, "text_side")?.as_deref())?;
    let (bytes, name) =
        form.image.ok_or_else(|| ApiError::bad_request("no image: send it in the multipart field \"image\""))?;
    blocking(&state, move |st| {
        st.refresh_model()?;
        let raw = embed_upload(st, &bytes, &name)?;
        let engine = read(&st.engine);
        tags_of(&engine, &raw, k, side).map(Json)
    })
    .await
}

/// Nearest words to a word or words (`king -man woman`).
#[utoipa::path(get, path = "/api/words", params(WordParams), responses((status = 200, body = [crate::words::Neighbour]), (status = 400, body = ErrorOut)))]
async fn words(
    Shared(state): Shared<AppState>,
    Query(p): Query<WordParams>,
) -> ApiResult<Json<Vec<crate::words::Neighbour>>> {
    let k = check_k(p.k, 10)?;
    blocking(&state, move |st| {
        let found = st.words.nearest_to_text(&p.q, k)?;
        Ok(Json(found))
    })
    .await
}

/// ImageNet classes for what is typed so far.
#[utoipa::path(get, path = "/api/classes", params(ClassParams), responses((status = 200, body = [ClassOut])))]
async fn classes(Query(p): Query<ClassParams>) -> ApiResult<Json<Vec<ClassOut>>> {
    let n = check_k(p.n, 10)?;
    let all = crate::backbone::imagenet_classes();
    Ok(Json(
        crate::backbone::suggest_classes(&p.q, n)
            .into_iter()
            .map(|i| ClassOut { index: i, name: all[i].name.clone() })
            .collect(),
    ))
}

/// Upload an image into the index (multipart `image`, optional `label`).
#[utoipa::path(post, path = "/api/images", request_body(content = AddForm, content_type = "multipart/form-data"), responses(
    (status = 201, description = "added", body = ImageOut), (status = 200, description = "the same bytes were there already: that image", body = ImageOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut), (status = 413, body = ErrorOut)))]
async fn add_image(Shared(state): Shared<AppState>, multipart: Multipart) -> ApiResult<Response> {
    let form = read_form(multipart).await?;
    let given_label = form.fields.get("label").map(|l| clean_label(l));
    let label = given_label.clone().unwrap_or_else(|| "uploads".into());
    let (bytes, name) =
        form.image.ok_or_else(|| ApiError::bad_request("no image: send it in the multipart field \"image\""))?;
    blocking(&state, move |st| {
        let hash = {
            use sha2::Digest;
            format!("{:x}", sha2::Sha256::digest(&bytes))
        };
        // The same bytes again: the same image (and key), 200; a new label is recorded on an upload.
        {
            let mut engine = write(&st.engine);
            if let Some(known) = engine.store.by_hash(&hash)?.into_iter().next() {
                let mut r = known;
                let uploaded = r.path.starts_with(DB_UPLOADS)
                    || st.uploads.as_ref().is_some_and(|u| crate::files::text_to_path(&r.path).starts_with(u));
                if let (true, Some(new_label)) = (uploaded, &given_label) {
                    if new_label != &r.label {
                        engine.store.update_location(r.key, &r.path, r.size, r.mtime, new_label)?;
                        r.label = new_label.clone();
                    }
                }
                return Ok(created(StatusCode::OK, image_out(r.key, &r.label, &r.path)));
            }
        }
        // The current model, so the new image gets its joint embedding.
        st.refresh_model()?;
        // Decoded and embedded before anything is written.
        let embedding = embed_upload(st, &bytes, &name)?;
        let ext = image::guess_format(&bytes).ok().and_then(|f| f.extensions_str().first().copied()).unwrap_or("img");
        let file = upload_file_name(&name, ext, &hash);
        let mut engine = write(&st.engine);
        let r = match &st.uploads {
            Some(uploads) => {
                let dir = uploads.join(&label);
                std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
                let path = dir.join(&file);
                if !path.exists() {
                    crate::files::write_atomic(&path, &bytes)?;
                }
                crate::indexer::add_file(engine.store.as_mut(), &path, |_| Ok(embedding))?
            }
            None => add_to_database(
                engine.store.as_ref(),
                &format!("{DB_UPLOADS}{label}/{file}"),
                &hash,
                &label,
                &bytes,
                embedding,
            )?,
        };
        refresh(&mut engine, &r.hash)?;
        Ok(created(StatusCode::CREATED, image_out(r.key, &r.label, &r.path)))
    })
    .await
}

/// An added (201) or already present (200) image, with its `Location`.
fn created(status: StatusCode, image: ImageOut) -> Response {
    let location = format!("/api/images/{}", image.key);
    (status, [(header::LOCATION, location)], Json(image)).into_response()
}

/// The stored name of an upload: the sender's file name (made safe), with
/// a piece of the content hash so two different files of one name never meet.
fn upload_file_name(name: &str, ext: &str, hash: &str) -> String {
    let base = Path::new(name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let safe: String = base
        .chars()
        .take(80)
        .map(|c| if c.is_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    let safe = safe.trim_matches('.');
    if safe.is_empty() {
        format!("{}.{ext}", &hash[..16])
    } else {
        format!("{safe}-{}.{ext}", &hash[..8])
    }
}

/// Index a file already on the server, under one of the indexed folders.
#[utoipa::path(post, path = "/api/images/by-path", request_body = AddByPath, responses(
    (status = 201, body = ImageOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut), (status = 403, body = ErrorOut)))]
async fn add_image_by_path(
    Shared(state): Shared<AppState>,
    Json(body): Json<AddByPath>,
) -> ApiResult<(StatusCode, Json<ImageOut>)> {
    blocking(&state, move |st| {
        let outside =
            || ApiError::new(StatusCode::FORBIDDEN, format!("{}: not a file under the indexed folders", body.path));
        let path = Path::new(&body.path).canonicalize().map_err(|_| outside())?;
        if !path.is_file() || !st.roots.iter().any(|r| path.starts_with(r)) {
            return Err(outside());
        }
        st.refresh_model()?;
        let mut engine = write(&st.engine);
        let r = crate::indexer::add_file(engine.store.as_mut(), &path, |p| {
            Ok(lock(&st.embedder).embed_file(p)?.embedding)
        })?;
        refresh(&mut engine, &r.hash)?;
        Ok((StatusCode::CREATED, Json(image_out(r.key, &r.label, &r.path))))
    })
    .await
}

/// One indexed image.
#[utoipa::path(get, path = "/api/images/{key}", params(("key" = i64, Path)), responses((status = 200, body = ImageOut), (status = 404, body = ErrorOut)))]
async fn image_info(Shared(state): Shared<AppState>, UrlPath(key): UrlPath<i64>) -> ApiResult<Json<ImageOut>> {
    blocking(&state, move |st| {
        let engine = read(&st.engine);
        let r = engine
            .store
            .by_key(key)?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no image with key {key}")))?;
        let uploaded = r.path.starts_with(DB_UPLOADS);
        let path = if uploaded { r.path.clone() } else { crate::files::display_path(&r.path) };
        Ok(Json(ImageOut { path: Some(path), ..image_out(r.key, &r.label, &r.path) }))
    })
    .await
}

/// The collection a page at a time, most recently added first (the page's
/// browse grid).
#[utoipa::path(get, path = "/api/images", params(PageParams), responses((status = 200, body = ImagePage), (status = 400, body = ErrorOut)))]
async fn list_images(Shared(state): Shared<AppState>, Query(p): Query<PageParams>) -> ApiResult<Json<ImagePage>> {
    let limit = p.limit.unwrap_or(60);
    if limit == 0 || limit > MAX_K {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_K}, got {limit}")));
    }
    blocking(&state, move |st| {
        let engine = read(&st.engine);
        let mut records = engine.store.recent(p.cursor, limit + 1)?;
        let more = records.len() > limit;
        records.truncate(limit);
        let next_cursor = if more { records.last().map(|r| r.key) } else { None };
        let images = records.iter().map(|r| image_out(r.key, &r.label, &r.path)).collect();
        Ok(Json(ImagePage { images, next_cursor, total: engine.store.len()? }))
    })
    .await
}

/// Remove an image from the index (an uploaded file is deleted too; files in your folders are kept).
#[utoipa::path(delete, path = "/api/images/{key}", params(("key" = i64, Path)), responses((status = 204), (status = 401, body = ErrorOut), (status = 404, body = ErrorOut)))]
async fn delete_image(Shared(state): Shared<AppState>, UrlPath(key): UrlPath<i64>) -> ApiResult<StatusCode> {
    blocking(&state, move |st| {
        let mut engine = write(&st.engine);
        let r = engine
            .store
            .by_key(key)?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no image with key {key}")))?;
        // A database drops an upload's bytes with its last image.
        engine.store.delete(&[key])?;
        if let Some(uploads) = &st.uploads {
            let uploads = uploads.canonicalize().unwrap_or_else(|_| uploads.clone());
            let path = crate::files::text_to_path(&r.path);
            if path.starts_with(&uploads) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Where uploads kept in a database are said to be (their paths are names, not files).
const DB_UPLOADS: &str = "db:uploads/";

/// Adds an upload to a database store with its bytes; the same content
/// under the same label is the same image.
fn add_to_database(
    store: &dyn crate::store::ImageStore,
    path: &str,
    hash: &str,
    label: &str,
    bytes: &[u8],
    embedding: Vec<f32>,
) -> crate::Result<crate::store::ImageRecord> {
    use crate::store::{NewImage, NewVector};
    let pg = store.as_postgres().ok_or_else(|| {
        crate::Error::Msg(format!("{}: this store keeps uploads as files, not in a database", store.describe()))
    })?;
    if let Some(r) = store.by_path(path)? {
        return Ok(r);
    }
    let vector = match store.by_hash(hash)?.into_iter().next() {
        Some(original) => NewVector::SameAs { row: original.row, norm: original.norm },
        None => NewVector::Embedding(embedding),
    };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let image = NewImage {
        path: path.to_owned(),
        hash: hash.to_owned(),
        size: bytes.len() as u64,
        mtime: now,
        label: label.to_owned(),
        vector,
    };
    pg.add_upload(&image, bytes)?;
    store.by_path(path)?.ok_or_else(|| crate::Error::Msg(format!("{path}: not found after adding")))
}

/// An image's bytes: its file, or (on a database) the upload's stored bytes,
/// which also stand in for a file this replica cannot see.
/// Whether the stored path of `r` is still the file that was indexed: a
/// regular file with the indexed size and modification time, inside a
/// served folder (or the uploads) when the server was given folders. A file
/// replaced since (by another picture, or a link to anything else) is not served.
fn check_indexed_file(st: &State, r: &crate::store::ImageRecord) -> std::result::Result<(), String> {
    let path = crate::files::text_to_path(&r.path);
    let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file any more".into());
    }
    if meta.len() != r.size || crate::indexer::mtime_nanos(&meta) != r.mtime {
        return Err("the file changed since it was indexed; re-run `imgsearch index`".into());
    }
    if !st.roots.is_empty() {
        let canonical = path.canonicalize().map_err(|e| e.to_string())?;
        if !st.roots.iter().any(|root| canonical.starts_with(root)) {
            return Err("the file is outside the served folders".into());
        }
    }
    Ok(())
}

fn original_bytes(st: &State, r: &crate::store::ImageRecord, hint: &str) -> ApiResult<Vec<u8>> {
    let from_file = if r.path.starts_with(DB_UPLOADS) {
        None
    } else {
        Some(
            check_indexed_file(st, r)
                .and_then(|()| std::fs::read(crate::files::text_to_path(&r.path)).map_err(|e| e.to_string())),
        )
    };
    let error = match from_file {
        Some(Ok(bytes)) => return Ok(bytes),
        Some(Err(e)) => e,
        None => "not stored".into(),
    };
    let engine = read(&st.engine);
    if let Some(bytes) = engine.store.as_postgres().map(|pg| pg.blob(&r.hash)).transpose()?.flatten() {
        return Ok(bytes);
    }
    Err(ApiError::new(StatusCode::NOT_FOUND, format!("image {}: its file cannot be read ({error}){hint}", r.key)))
}

fn content_type(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(f) => f.to_mime_type(),
        Err(_) => "application/octet-stream",
    }
}

/// Thumbnail sizes (longest side, pixels): 256 for the grid, 512 for HiDPI screens.
const THUMB_SIZES: [u32; 2] = [THUMB_SIZE, 2 * THUMB_SIZE];

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThumbParams {
    /// Longest side in pixels: 256 (default) or 512.
    pub size: Option<u32>,
}

/// The entity tag of an image's bytes: its content hash (and thumbnail size).
fn etag(hash: &str, size: Option<u32>) -> String {
    match size {
        Some(s) => format!("\"{hash}-{s}\""),
        None => format!("\"{hash}\""),
    }
}

/// Whether the client's copy (`If-None-Match`) is current.
fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == tag)
}

/// `304 Not Modified` with the validators.
fn unchanged(tag: String, cache: &'static str) -> Response {
    (StatusCode::NOT_MODIFIED, [(header::ETAG, tag), (header::CACHE_CONTROL, cache.to_owned())]).into_response()
}

/// The record for `key`, and whether its bytes are still what was indexed
/// (an upload's always are).
fn record(st: &State, key: i64) -> ApiResult<(crate::store::ImageRecord, bool)> {
    let r = read(&st.engine)
        .store
        .by_key(key)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no image with key {key}")))?;
    let current = r.path.starts_with(DB_UPLOADS) || check_indexed_file(st, &r).is_ok();
    Ok((r, current))
}

/// A JPEG thumbnail (longest side 256, or 512 with `size=512`), made once and
/// cached; `ETag` is the content hash, so a browser revalidates for free.
#[utoipa::path(get, path = "/api/images/{key}/thumbnail", params(("key" = i64, Path), ThumbParams), responses((status = 200, content_type = "image/jpeg", body = Vec<u8>), (status = 304), (status = 400, body = ErrorOut), (status = 404, body = ErrorOut)))]
async fn thumbnail(
    Shared(state): Shared<AppState>,
    UrlPath(key): UrlPath<i64>,
    Query(p): Query<ThumbParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    const CACHE: &str = "max-age=86400";
    let size = p.size.unwrap_or(THUMB_SIZE);
    if !THUMB_SIZES.contains(&size) {
        return Err(ApiError::bad_request(format!("size must be one of {THUMB_SIZES:?}, got {size}")));
    }
    let answer = blocking(&state, move |st| {
        let (r, current) = record(st, key)?;
        let tag = etag(&r.hash, Some(size));
        if current && not_modified(&headers, &tag) {
            return Ok(Err(tag));
        }
        let cached = st.thumbs.join(format!("{}-{size}.jpg", r.hash));
        // The cache is served only while the indexed file is still what was indexed.
        if let (true, Ok(bytes)) = (current, std::fs::read(&cached)) {
            return Ok(Ok((tag, bytes)));
        }
        let original = original_bytes(st, &r, "; re-run `imgsearch index`")?;
        let rgb = crate::backbone::decode_rgb(
            &original,
            &crate::files::text_to_path(&r.path),
            crate::backbone::DEFAULT_MAX_PIXELS,
        )?;
        let (w, h) = rgb.dimensions();
        let scale = (size as f64 / w.max(h) as f64).min(1.0);
        let (tw, th) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
        let thumb = image::imageops::thumbnail(&rgb, tw, th);
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85).encode_image(&thumb).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the thumbnail of {key}: {e}"))
        })?;
        crate::files::write_atomic(&cached, &out)?;
        Ok(Ok((tag, out)))
    })
    .await?;
    Ok(match answer {
        Err(tag) => unchanged(tag, CACHE),
        Ok((tag, bytes)) => (
            [
                (header::CONTENT_TYPE, "image/jpeg".to_owned()),
                (header::CACHE_CONTROL, CACHE.to_owned()),
                (header::ETAG, tag),
            ],
            bytes,
        )
            .into_response(),
    })
}

/// A byte range asked for in `Range`: one `bytes=a-b`, `a-` or `-n` range.
/// `None`: the whole file (no header, or several ranges, which may be
/// answered whole); `Some(Err(()))`: nothing of the file is in the range.
fn byte_range(headers: &HeaderMap, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = headers.get(header::RANGE)?.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let number = |t: &str| if t.trim().is_empty() { Some(None) } else { t.trim().parse::<u64>().ok().map(Some) };
    let range = match (number(a)?, number(b)?) {
        (Some(start), Some(end)) if end < start => return None, // not a valid range: ignored
        (Some(start), end) => (start, end.unwrap_or(u64::MAX).min(len.saturating_sub(1))),
        (None, Some(n)) if n > 0 => (len.saturating_sub(n), len.saturating_sub(1)),
        _ => return None,
    };
    Some(if range.0 <= range.1 && range.0 < len { Ok(range) } else { Err(()) })
}

/// The original file, with `ETag` (its content hash), `Last-Modified` and
/// byte ranges (`Range`: 206, or 416 beyond the end).
#[utoipa::path(get, path = "/api/images/{key}/original", params(("key" = i64, Path)), responses((status = 200, body = Vec<u8>), (status = 206, body = Vec<u8>), (status = 304), (status = 404, body = ErrorOut), (status = 416, body = ErrorOut)))]
async fn original(
    Shared(state): Shared<AppState>,
    UrlPath(key): UrlPath<i64>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    const CACHE: &str = "no-cache";
    let (r, bytes) = blocking(&state, move |st| {
        let (r, current) = record(st, key)?;
        if current && not_modified(&headers, &etag(&r.hash, None)) {
            return Ok((r, None));
        }
        let bytes = original_bytes(st, &r, "")?;
        Ok((r, Some((bytes, headers))))
    })
    .await?;
    let tag = etag(&r.hash, None);
    let Some((bytes, headers)) = bytes else { return Ok(unchanged(tag, CACHE)) };
    let modified = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(r.mtime.max(0) as u64);
    let mut response_headers = HeaderMap::new();
    let mut put = |name: header::HeaderName, value: String| {
        if let Ok(v) = value.parse() {
            response_headers.insert(name, v);
        }
    };
    put(header::CONTENT_TYPE, content_type(&bytes).to_owned());
    put(header::ETAG, tag);
    put(header::CACHE_CONTROL, CACHE.to_owned());
    put(header::ACCEPT_RANGES, "bytes".to_owned());
    if !r.path.starts_with(DB_UPLOADS) {
        put(header::LAST_MODIFIED, httpdate::fmt_http_date(modified));
    }
    let len = bytes.len() as u64;
    match byte_range(&headers, len) {
        None => Ok((response_headers, bytes).into_response()),
        Some(Ok((start, end))) => {
            put(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            Ok((StatusCode::PARTIAL_CONTENT, response_headers, bytes[start as usize..=end as usize].to_vec())
                .into_response())
        }
        Some(Err(())) => {
            let mut answer = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("image {key} has {len} bytes; the range asked for is outside them"),
            )
            .into_response();
            if let Ok(v) = format!("bytes */{len}").parse() {
                answer.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            Ok(answer)
        }
    }
}
