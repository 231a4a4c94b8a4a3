//! The search service: an HTTP API (axum) and a web page over one index.
//!
//! State is loaded once: the store (memory-mapped vectors), the HNSW graph
//! when there is one, the network, the word vectors and the joint model.
//! Inference and searches run on the blocking pool behind a bounded queue
//! (a full queue answers 503 at once); the async threads only parse and
//! answer. Stored images are addressed by key, never by path.

mod api;
mod metrics;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub use api::{app, ApiDoc};

use crate::backbone::Embedder;
use crate::index::HnswIndex;
use crate::joint::vectors::JointVectors;
use crate::joint::JointModel;
use crate::store::Store;
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
    pub backbone: String,
    /// The model directory (the sentence encoder and its tag vocabulary, if the model uses them).
    pub models: PathBuf,
    /// The word-vector file the joint model was trained with (default GloVe 50d).
    pub words_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            token: None,
            max_upload: 20 << 20,
            queue: 64,
            backbone: "lite0".into(),
            models: crate::models::models_dir(None),
            words_file: None,
        }
    }
}

/// The index and what is derived from it; changes under the lock.
pub(crate) struct Engine {
    pub store: Store,
    pub hnsw: Option<HnswIndex>,
    pub joint: Option<(JointModel, JointVectors)>,
}

/// Everything a request may use.
pub struct State {
    pub(crate) engine: Mutex<Engine>,
    pub(crate) embedder: Mutex<Embedder>,
    /// Word vectors for `/api/words`.
    pub(crate) words: WordVectors,
    /// The joint model's text side (queries and tags), when there is a model.
    pub(crate) text: Option<crate::text::QueryEncoder>,
    pub(crate) db: PathBuf,
    pub(crate) uploads: PathBuf,
    pub(crate) thumbs: PathBuf,
    pub(crate) roots: Vec<PathBuf>,
    pub(crate) options: Options,
    pub(crate) queue: Arc<tokio::sync::Semaphore>,
    pub(crate) metrics: metrics::Metrics,
}

impl State {
    /// Loads the index in `db` and the models. Uploaded images live in
    /// `<db>/uploads`, thumbnails in `<db>/thumbs`.
    pub fn load(db: &Path, embedder: Embedder, words: WordVectors, options: Options) -> crate::Result<Self> {
        let dim = embedder.model().config().embedding_dim();
        let store = Store::open(db, &options.backbone, dim)?;
        let hnsw = if HnswIndex::exists(db) { Some(HnswIndex::load(db, Default::default())?) } else { None };
        let (joint, text) = if crate::joint::exists(db) {
            let model = JointModel::load(db)?;
            let trained = model.info.words.clone();
            model.check_compatible(&options.backbone, &trained)?;
            let text = crate::text::QueryEncoder::for_model(&options.models, &trained, options.words_file.as_deref())?;
            let vectors = JointVectors::update(&store, &model)?;
            (Some((model, vectors)), Some(text))
        } else {
            (None, None)
        };
        let uploads = db.join("uploads");
        let thumbs = db.join("thumbs");
        for dir in [&uploads, &thumbs] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut roots: Vec<PathBuf> = options.roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
        roots.push(uploads.canonicalize().map_err(|e| Error::io(&uploads, e))?);
        Ok(Self {
            engine: Mutex::new(Engine { store, hnsw, joint }),
            embedder: Mutex::new(embedder),
            words,
            text,
            db: db.to_path_buf(),
            uploads,
            thumbs,
            roots,
            queue: Arc::new(tokio::sync::Semaphore::new(options.queue.max(1))),
            options,
            metrics: metrics::Metrics::default(),
        })
    }
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
            | Error::UnknownClass { .. } => StatusCode::BAD_REQUEST,
            Error::NoModel { .. } | Error::ModelMismatch { .. } => StatusCode::CONFLICT,
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

/// Serves `state` on `addr` until Ctrl-C.
pub async fn serve(addr: std::net::SocketAddr, state: State) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_loopback(&addr) || state.options.token.is_some(),
        "binding to {addr} (not loopback) needs a token: pass --token or set IMGSEARCH_TOKEN"
    );
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let app = app(Arc::new(state));
    eprintln!("serving on http://{}/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
