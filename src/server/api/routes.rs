//! The router: routes, the OpenAPI document, and the middleware every request passes (host check, token, private reads, JSON errors, metrics).

use super::*;

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
        duplicates,
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
        crate::store::Sort,
        crate::words::Neighbour,
        ClassOut,
        StatusOut,
        ImageOut,
        ImagePage,
        DuplicatesOut,
        DuplicateGroup,
        DuplicateOut,
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
pub(super) struct BearerScheme;

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
        .route("/api/duplicates", get(duplicates))
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
pub(super) async fn track(Shared(state): Shared<AppState>, req: Request, next: Next) -> Response {
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
pub(super) async fn json_errors(req: Request, next: Next) -> Response {
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
pub(super) fn host_name(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    match a.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or("")),
        None => a
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(a.clone(), |(h, _)| h.to_owned()),
    }
}

pub(super) fn host_allowed(state: &State, authority: &str) -> bool {
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
pub(super) async fn check_host(
    Shared(state): Shared<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
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
pub(super) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Mutating requests come from this server's own page (no foreign
/// `Origin`, no `Sec-Fetch-Site: cross-site`), and need
/// `Authorization: Bearer <token>` when a token is set.
pub(super) async fn require_token(
    Shared(state): Shared<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
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
pub(super) const TOKEN_COOKIE: &str = "imgsearch_token";

/// Whether a request carries the token: `Authorization: Bearer`, or the cookie.
pub(super) fn has_token(headers: &HeaderMap, token: &str) -> bool {
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
pub(super) async fn private_reads(
    Shared(state): Shared<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
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
