//! `imgsearch serve`: fetch what is missing, index the folders, serve the page and the API.

use super::*;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Folders to index before serving (incrementally); images may also be
    /// added later by path from under them.
    pub folders: Vec<PathBuf>,
    /// Address to listen on. Anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Token required on requests that change the index (Authorization: Bearer <token>).
    #[arg(long, env = "IMGSEARCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Searches, pictures and the page need the token too: for a server
    /// others can reach. Open the page once as `http://<addr>/?token=<token>`
    /// (it keeps a cookie), or send `Authorization: Bearer <token>`.
    #[arg(long, requires = "token")]
    pub private: bool,
    /// Another host name the server answers to (repeatable), e.g. the name
    /// of a reverse proxy. A loopback server answers to localhost,
    /// 127.0.0.1 and [::1] only; another bind answers to any name unless some are given.
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_hosts: Vec<String>,
    /// Seconds a client has to send a request's headers; also how long an
    /// idle connection is kept open.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub header_timeout: u64,
    /// Backbone network of the index.
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
    /// Word-vector file (default: GloVe 6B 50d).
    #[arg(long = "words", value_name = "FILE")]
    pub vectors: Option<PathBuf>,
    /// Largest upload, megabytes.
    #[arg(long, default_value_t = 20)]
    pub max_upload_mb: usize,
    /// Requests that may queue for inference and search at once (503 beyond).
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
}

pub(super) fn serve(models_dir: &std::path::Path, db: &std::path::Path, a: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::server::is_loopback(&a.addr) || a.token.is_some(),
        "binding to {} (not loopback) needs a token: pass --token or set IMGSEARCH_TOKEN",
        a.addr
    );
    check_folders(&a.folders)?;
    anyhow::ensure!(
        a.token.as_deref().is_none_or(|t| !t.trim().is_empty()),
        "--token (or IMGSEARCH_TOKEN) is empty: give a real secret, or leave it unset on a loopback address"
    );
    // The main job: fetch what is missing (a no-op when present), index, serve.
    let mut pins = vec![models::GLOVE_50D, models::MINILM];
    pins.push(models::backbone_pin(a.backbone));
    models::fetch(models_dir, &pins, &mut |line| eprintln!("{line}"))?;
    let embedder = load_embedder(models_dir, a.backbone)?;
    let mut library = open_library(models_dir, db, a.backbone, a.vectors.as_deref(), Access::Write)?;
    if !a.folders.is_empty() {
        let (r, _) = index_into(&mut library, &embedder, &a.folders)?;
        eprintln!(
            "indexed {} new, {} unchanged, {} failed ({} images)",
            r.embedded,
            r.unchanged,
            r.failed.len(),
            library.store().len()?
        );
    }
    let words = crate::words::open(models_dir, a.vectors.as_deref())?;
    let options = crate::server::Options {
        roots: a.folders.clone(),
        token: a.token.clone(),
        max_upload: a.max_upload_mb << 20,
        queue: a.queue,
        backbone: a.backbone,
        models: models_dir.to_path_buf(),
        words_file: a.vectors.clone(),
        header_timeout: std::time::Duration::from_secs(a.header_timeout.max(1)),
        private: a.private,
        allowed_hosts: if crate::server::is_loopback(&a.addr) {
            Some(crate::server::LOOPBACK_HOSTS.iter().map(|h| h.to_string()).chain(a.allow_hosts.clone()).collect())
        } else if a.allow_hosts.is_empty() {
            None
        } else {
            Some(a.allow_hosts.clone())
        },
    };
    let state = crate::server::State::load(library, embedder, words, options)?;
    // The tag vocabulary is made once (seconds) before the first request waits for it.
    state.warm_up()?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(crate::server::serve(a.addr, state))
}
