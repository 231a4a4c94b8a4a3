//! Serving an image's bytes: originals (ranges, validators) and thumbnails (two sizes, cached), only while the file is what was indexed.

use super::*;

/// Whether the stored path of `r` is still the file that was indexed: a
/// regular file with the indexed size and modification time, inside a
/// served folder (or the uploads) when the server was given folders. A file
/// replaced since (by another picture, or a link to anything else) is not served.
pub(super) fn check_indexed_file(st: &State, r: &crate::store::ImageRecord) -> std::result::Result<(), String> {
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

/// An image's bytes: its file, or (on a database) the upload's stored bytes,
/// which also stand in for a file this replica cannot see.
pub(super) fn original_bytes(st: &State, r: &crate::store::ImageRecord, hint: &str) -> ApiResult<Vec<u8>> {
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
    if let Some(bytes) = engine.store().blob(&r.hash)? {
        return Ok(bytes);
    }
    Err(ApiError::new(StatusCode::NOT_FOUND, format!("image {}: its file cannot be read ({error}){hint}", r.key)))
}

pub(super) fn content_type(bytes: &[u8]) -> &'static str {
    if crate::backbone::is_heif(bytes) {
        return "image/heic";
    }
    if crate::backbone::raw::is_raw(bytes) {
        return crate::backbone::raw::kind(bytes).1;
    }
    match image::guess_format(bytes) {
        Ok(f) => f.to_mime_type(),
        Err(_) => "application/octet-stream",
    }
}

/// The entity tag of an image's bytes: its content hash (and thumbnail size).
pub(super) fn etag(hash: &str, size: Option<u32>) -> String {
    match size {
        Some(s) => format!("\"{hash}-{s}\""),
        None => format!("\"{hash}\""),
    }
}

/// Whether the client's copy (`If-None-Match`) is current.
pub(super) fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == tag)
}

/// `304 Not Modified` with the validators.
pub(super) fn unchanged(tag: String, cache: &'static str) -> Response {
    (StatusCode::NOT_MODIFIED, [(header::ETAG, tag), (header::CACHE_CONTROL, cache.to_owned())]).into_response()
}

/// The record for `key`, and whether its bytes are still what was indexed
/// (an upload's always are).
pub(super) fn record(st: &State, key: i64) -> ApiResult<(crate::store::ImageRecord, bool)> {
    let r = read(&st.engine)
        .store()
        .by_key(key)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no image with key {key}")))?;
    let current = r.path.starts_with(DB_UPLOADS) || check_indexed_file(st, &r).is_ok();
    Ok((r, current))
}

/// A JPEG thumbnail (longest side 256, or 512 with `size=512`), made once and
/// cached; `ETag` is the content hash, so a browser revalidates for free.
#[utoipa::path(get, path = "/api/images/{key}/thumbnail", params(("key" = i64, Path), ThumbParams), responses((status = 200, content_type = "image/jpeg", body = Vec<u8>), (status = 304), (status = 400, body = ErrorOut), (status = 404, body = ErrorOut)))]
pub(super) async fn thumbnail(
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
pub(super) fn byte_range(headers: &HeaderMap, len: u64) -> Option<Result<(u64, u64), ()>> {
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
pub(super) async fn original(
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
