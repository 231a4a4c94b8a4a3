//! The search service: an HTTP API (axum) and a web page over one index.
//!
//! State is loaded once: the store (memory-mapped vectors), the HNSW graph
//! when there is one, the network, the word vectors and the joint model.
//! Inference and searches run on the blocking pool behind a bounded queue
//! (a full queue answers 503 at once); the async threads only parse and
//! answer. Stored images are addressed by key, never by path.
//!
//! On PostgreSQL (`--db postgres://...`) a replica keeps nothing of its own
//! but a thumbnail cache: uploads are stored in the database, searches run
//! there, and the joint model is the database's current one, reloaded when
//! another process trains a new one.

mod api;
mod metrics;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub use api::{app, ApiDoc};

use crate::backbone::Embedder;
use crate::joint::TextSpace;
use crate::library::Library;
use crate::words::WordVectors;
use crate::Error;

/// How the service runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Folders images may be added from by path (besides uploads).
    pub roots: Vec<PathBuf>,
    /// Required on mutating requests (`Authorization: Bearer <token>`) when set.
    pub token: Option<String>,
    /// Largest accepted request body (uploads), bytes.
    pub max_upload: usize,
    /// Requests that may wait for or hold the blocking pool at once.
    pub queue: usize,
    pub backbone: crate::backbone::Backbone,
    /// The model directory (the sentence encoder and its tag vocabulary, if the model uses them).
    pub models: PathBuf,
    /// The word-vector file the joint model was trained with (default GloVe 50d).
    pub words_file: Option<PathBuf>,
    /// The host names requests may be addressed to (`Host`, and `Origin` on
    /// requests that change the index), without ports; `None`: any (a
    /// public bind with no list). Stops DNS rebinding and cross-site writes
    /// against a server on this machine.
    pub allowed_hosts: Option<Vec<String>>,
    /// A request's headers must arrive within this; also how long an idle
    /// keep-alive connection is kept.
    pub header_timeout: std::time::Duration,
    /// Reads need the token too (every route but `/healthz` and `/readyz`):
    /// the `Authorization` header, or the cookie the page gets from
    /// `/?token=<token>`. For a server others can reach.
    pub private: bool,
}

impl Options {
    /// The library settings these options describe, for the store `db`.
    pub fn settings(&self, db: &std::path::Path) -> crate::library::Settings {
        crate::library::Settings {
            db: db.to_path_buf(),
            models: self.models.clone(),
            backbone: self.backbone,
            words_file: self.words_file.clone(),
        }
    }
}

/// The names of this machine a loopback server answers to.
pub const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

impl Default for Options {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            token: None,
            max_upload: 20 << 20,
            queue: 64,
            backbone: crate::backbone::Backbone::Lite0,
            models: crate::models::models_dir(None),
            words_file: None,
            allowed_hosts: Some(LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect()),
            header_timeout: HEADER_TIMEOUT,
            private: false,
        }
    }
}

/// Everything a request may use.
pub struct State {
    /// Searches share it; adds, deletions and a model reload take it alone.
    pub(crate) engine: RwLock<Library>,
    pub(crate) embedder: Mutex<Embedder>,
    /// Word vectors for `/api/words`.
    pub(crate) words: WordVectors,
    /// The text space (queries and tags), once loaded.
    pub(crate) text: Mutex<Option<Arc<TextSpace>>>,
    /// Where uploads are written (embedded store; a database keeps their bytes).
    pub(crate) uploads: Option<PathBuf>,
    pub(crate) thumbs: PathBuf,
    pub(crate) roots: Vec<PathBuf>,
    pub(crate) options: Options,
    pub(crate) queue: Arc<tokio::sync::Semaphore>,
    pub(crate) metrics: metrics::Metrics,
}

impl State {
    /// Serves `library` (a folder or a database) with these models. A
    /// folder keeps uploads in `<db>/uploads` and thumbnails in
    /// `<db>/thumbs`; a database keeps uploads itself, and thumbnails are
    /// cached in the user's cache folder.
    pub fn load(library: Library, embedder: Embedder, words: WordVectors, options: Options) -> crate::Result<Self> {
        if let Err(e) = library.store().upkeep() {
            eprintln!("note: {e}; searching exactly meanwhile");
        }
        library.store().keep_vectors();
        let (uploads, thumbs) = match library.store().folder() {
            Some(folder) if !library.store().keeps_uploads() => (Some(folder.join("uploads")), folder.join("thumbs")),
            Some(folder) => (None, folder.join("thumbs")),
            None => (None, thumbnail_cache()),
        };
        for dir in uploads.iter().chain([&thumbs]) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut roots: Vec<PathBuf> = options.roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
        if let Some(uploads) = &uploads {
            roots.push(uploads.canonicalize().map_err(|e| Error::io(uploads, e))?);
        }
        let state = Self {
            engine: RwLock::new(library),
            embedder: Mutex::new(embedder),
            words,
            text: Mutex::new(None),
            uploads,
            thumbs,
            roots,
            queue: Arc::new(tokio::sync::Semaphore::new(options.queue.max(1))),
            options,
            metrics: metrics::Metrics::default(),
        };
        state.refresh_model()?;
        Ok(state)
    }

    /// Loads the text space with the store's current joint model when it
    /// is not the one in use (at start, and after another process trained
    /// one), with its sides' image vectors.
    pub(crate) fn refresh_model(&self) -> crate::Result<()> {
        if self.engine.read().unwrap_or_else(|e| e.into_inner()).text_space_is_current()? {
            return Ok(());
        }
        let mut library = self.engine.write().unwrap_or_else(|e| e.into_inner());
        // Another request may have loaded it while this one waited.
        if library.text_space_is_current()? {
            return Ok(());
        }
        let space = library.text_space()?;
        // Every side's vectors, including images another process added
        // while the model was being trained.
        library.after_add(None)?;
        *self.text.lock().unwrap_or_else(|e| e.into_inner()) = Some(space);
        Ok(())
    }

    /// Picks up images another process (`index`, `train`, another `serve`)
    /// committed to the store since this one last looked.
    pub(crate) fn refresh_store(&self) -> crate::Result<()> {
        if !self.engine.read().unwrap_or_else(|e| e.into_inner()).store().is_stale()? {
            return Ok(());
        }
        self.engine.write().unwrap_or_else(|e| e.into_inner()).refresh()?;
        Ok(())
    }

    /// Makes what the first requests would otherwise wait for (the tag vocabulary).
    pub fn warm_up(&self) -> crate::Result<()> {
        if let Some(space) = self.text() {
            space.encoder.tag_words()?;
        }
        Ok(())
    }

    /// The text space, once loaded.
    pub(crate) fn text(&self) -> Option<Arc<TextSpace>> {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Where a database-backed replica caches thumbnails (derived data).
fn thumbnail_cache() -> PathBuf {
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("imgsearch").join("thumbs")
}

/// An error answer: a status and a message saying what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::BadImage { .. }
            | Error::TooLarge { .. }
            | Error::UnknownWord { .. }
            | Error::EmptyQuery
            | Error::BadQuery(_)
            | Error::QueryTooLong { .. }
            | Error::UnknownClass { .. } => StatusCode::BAD_REQUEST,
            Error::NoModel { .. } | Error::SideNeedsModel { .. } | Error::ModelMismatch { .. } => StatusCode::CONFLICT,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // Uploads are decoded from a temporary name; say "the upload".
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// Whether `addr` only listens on this machine.
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Connections served at once; more wait in the listen backlog (so a
/// crowd of slow or idle clients cannot lock everyone else out).
pub const MAX_CONNECTIONS: usize = 512;
/// The default of [`Options::header_timeout`].
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// The longest a request may take, body included (408 beyond).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// How long requests in flight may finish after SIGTERM or Ctrl-C.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what Docker and systemd send).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Serves `state` on `addr` until SIGTERM or Ctrl-C, then lets requests in
/// flight finish (up to [`DRAIN_TIMEOUT`]). Our own accept loop over hyper,
/// not `axum::serve`: that one sets no header timeout and no connection cap.
pub async fn serve(addr: std::net::SocketAddr, state: State) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    anyhow::ensure!(
        is_loopback(&addr) || state.options.token.is_some(),
        "binding to {addr} (not loopback) needs a token: pass --token or set IMGSEARCH_TOKEN"
    );
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let state = Arc::new(state);
    let app = app(state.clone()).layer(axum::middleware::from_fn(|req, next: axum::middleware::Next| async move {
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request took too long").into_response(),
        }
    }));
    match (state.options.private, &state.options.token) {
        (true, Some(_)) => {
            eprintln!("serving on http://{}/ (private: open it as /?token=<token>)", listener.local_addr()?)
        }
        _ => eprintln!("serving on http://{}/", listener.local_addr()?),
    }
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(state.options.header_timeout).keep_alive(true);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p?,
            _ = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: wait a moment, go on.
                Err(_) => { tokio::time::sleep(std::time::Duration::from_millis(50)).await; continue }
            },
            _ = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    eprintln!("shutting down: letting requests in flight finish");
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    // The router holds the state too: it must not be the last reference.
    drop(app);
    // The last reference goes on a blocking thread: closing the database
    // pool's (synchronous) connections must not block an async worker.
    tokio::task::spawn_blocking(move || drop(state)).await?;
    Ok(())
}
