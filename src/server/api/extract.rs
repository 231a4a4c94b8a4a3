//! What handlers share: the blocking pool, the engine's locks, and reading parameters and multipart forms.

use super::*;

/// Runs `f` on the blocking pool, or answers 503 when the queue is full.
pub(super) async fn blocking<T: Send + 'static>(
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

pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in another request must not take the index down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine for reading: searches run side by side.
pub(super) fn read(engine: &std::sync::RwLock<Library>) -> std::sync::RwLockReadGuard<'_, Library> {
    engine.read().unwrap_or_else(|e| e.into_inner())
}

/// The engine for changing: adds and deletions run alone.
pub(super) fn write(engine: &std::sync::RwLock<Library>) -> std::sync::RwLockWriteGuard<'_, Library> {
    engine.write().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- helpers

pub(super) fn check_k(k: Option<usize>, default: usize) -> ApiResult<usize> {
    let k = k.unwrap_or(default);
    if k == 0 || k > MAX_K {
        return Err(ApiError::bad_request(format!("k must be between 1 and {MAX_K}, got {k}")));
    }
    Ok(k)
}

pub(super) fn image_out(key: i64, label: &str, path: &str) -> ImageOut {
    ImageOut {
        key,
        label: label.to_owned(),
        file: crate::files::display_file_name(path),
        thumbnail: format!("/api/images/{key}/thumbnail"),
        original: format!("/api/images/{key}/original"),
        path: None,
    }
}

/// An uploaded image, read from a multipart form with its other fields.
pub(super) struct Form {
    pub(super) image: Option<(Vec<u8>, String)>,
    pub(super) fields: std::collections::HashMap<String, String>,
}

pub(super) async fn read_form(mut multipart: Multipart) -> ApiResult<Form> {
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

pub(super) fn field<T: std::str::FromStr>(form: &Form, name: &str) -> ApiResult<Option<T>> {
    match form.fields.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("field {name}: cannot read \"{v}\""))),
    }
}

/// The raw CNN embedding of an upload (decoded and checked in memory).
pub(super) fn embed_upload(state: &State, bytes: &[u8], name: &str) -> ApiResult<Vec<f32>> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the uploaded image is empty"));
    }
    let shown = PathBuf::from(format!("upload \"{name}\""));
    Ok(lock(&state.embedder).embed_bytes(bytes, &shown)?.embedding)
}

pub(super) fn stored_embedding(engine: &Library, key: i64) -> ApiResult<Vec<f32>> {
    let r = engine
        .store()
        .by_key(key)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no image with key {key}")))?;
    Ok(engine.store().embedding(&r)?)
}

pub(super) fn text_side(requested: Option<&str>) -> ApiResult<Option<Side>> {
    match requested.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => Ok(Some(s.parse::<Side>().map_err(|e| ApiError::bad_request(e.to_string()))?)),
    }
}
