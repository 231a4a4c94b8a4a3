//! The shared store: PostgreSQL with pgvector, for several indexers and
//! `serve` replicas on one database.
//!
//! - `vectors`: one row per distinct content (sha256 unique), the unit
//!   embedding as a pgvector column, and its norm. Two indexers that meet
//!   the same file store its vector once.
//! - `images`: key, path (unique), hash, size, mtime, label, photo facts,
//!   and the embedding again at half precision (`half`), with the HNSW
//!   index (cosine) that image searches walk, checking a filter on each
//!   row they reach; a narrow filter scores it without a join to `vectors`.
//!   The distances returned are always the full-precision ones.
//! - `settings`: backbone and dimension; `schema_version`: the migrations
//!   applied. Migrations run in one transaction under an advisory lock, so
//!   processes starting together apply them once; a schema newer than this
//!   binary is refused with both versions named.
//!
//! - `models`: every trained joint model (`model.json` text and the
//!   safetensors bytes); the newest row is the one every replica uses.
//! - `joint`: each content's joint embedding per model, a pgvector column;
//!   each model has its own partial HNSW index (cosine) over its rows,
//!   `joint_hnsw_<id>`. Saving a model writes and indexes its rows in one
//!   transaction while searches go on with the previous model's (nothing
//!   they read is locked); then the previous rows and index are dropped.
//!   Images added later get theirs from whoever adds them
//!   ([`PgStore::sync_joint`]).
//! - `text_vectors`: each content's vector on the zero-shot and fused text
//!   sides, keyed by the projection's fingerprint (the same in every process
//!   with the same backbone, encoder and model), with a partial HNSW index
//!   per fingerprint, `text_hnsw_<fingerprint prefix>`; filled by whoever
//!   adds images and at load ([`PgStore::sync_text`]); a side's rows of an
//!   older projection are dropped once the new one is complete.
//! - `blobs`: the bytes of images uploaded through `serve`, so every
//!   replica can show an upload another one received.
//!
//! Connections come from an r2d2 pool; each sets a statement timeout and
//! keeps the searches' statements it prepared (`Session`). `upkeep`
//! refreshes the planner's statistics after bulk writes. Reads
//! and the (idempotent, upserting) batch writes are retried after a lost
//! connection; a batch is one transaction, so a retry neither loses nor
//! duplicates anything.

use std::time::Duration;

use pgvector::Vector;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

mod cache;
mod text;

pub use text::Project;

use super::{
    Checked, Cursor, Filter, ImageRecord, ImageStore, NewImage, NewModel, Projection, SavedModel, Sort, StoreQuery,
    StoredModel, TextSide,
};
use crate::{Error, Result};

type Pool = r2d2::Pool<Manager>;
type Conn = r2d2::PooledConnection<Manager>;

/// A pooled connection and the statements it prepared for searches, so
/// a search's SQL is planned once per connection, not per search (planning
/// took 0.3 ms of an unfiltered search and 1.0-1.5 ms of a filtered one).
pub(super) struct Session {
    client: postgres::Client,
    prepared: std::collections::HashMap<String, postgres::Statement>,
}

impl Session {
    /// `sql` prepared on this connection, once.
    pub(super) fn prepared(&mut self, sql: &str) -> std::result::Result<postgres::Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        // Each filter's shape and each k is a statement of its own: bounded,
        // but not small. Dropped statements are closed on the server.
        if self.prepared.len() >= 256 {
            self.prepared.clear();
        }
        let statement = self.client.prepare(sql)?;
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl std::ops::Deref for Session {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

/// Makes the pool's sessions (as `r2d2_postgres` makes bare clients).
pub(super) struct Manager(PostgresConnectionManager<NoTls>);

impl r2d2::ManageConnection for Manager {
    type Connection = Session;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<Session, postgres::Error> {
        Ok(Session { client: self.0.connect()?, prepared: Default::default() })
    }

    fn is_valid(&self, session: &mut Session) -> std::result::Result<(), postgres::Error> {
        self.0.is_valid(&mut session.client)
    }

    fn has_broken(&self, session: &mut Session) -> bool {
        self.0.has_broken(&mut session.client)
    }
}

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i32 = 10;

/// How long one statement may run.
const STATEMENT_TIMEOUT_MS: u64 = 60_000;
/// pgvector's HNSW candidate list (its own default is 40).
pub const DEFAULT_EF_SEARCH: usize = 100;
/// Attempts for an idempotent operation whose connection was lost.
const ATTEMPTS: usize = 4;
/// How long a request waits for a pooled connection (the pool reconnects meanwhile).
const POOL_TIMEOUT: Duration = Duration::from_secs(4);

/// Whether `db` names a PostgreSQL database rather than a folder.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    /// `host:port/dbname`, for messages (never the password).
    name: String,
    dim: usize,
    /// pgvector's `hnsw.ef_search` for [`ImageStore::nearest`].
    ef_search: usize,
    /// Exact searches (no index scans), for `search --exact`.
    exact: std::sync::atomic::AtomicBool,
    /// The share of images each recent filter lets through, and when it
    /// was counted: how a filtered search picks its plan (`text.rs`).
    shares: std::sync::Mutex<Vec<(Filter, f64, std::time::Instant)>>,
    /// Whether this process keeps the vectors narrow filters score in
    /// `cache` (a long-lived one: [`ImageStore::keep_vectors`]).
    keep: std::sync::atomic::AtomicBool,
    cache: cache::Cache,
}

fn migrations(dim: usize) -> Vec<String> {
    vec![
        format!(
            "CREATE EXTENSION IF NOT EXISTS vector;
         CREATE TABLE settings(name TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE vectors(
             id BIGSERIAL PRIMARY KEY,
             hash TEXT NOT NULL UNIQUE,
             norm REAL NOT NULL,
             embedding vector({dim}) NOT NULL);
         CREATE INDEX vectors_embedding_hnsw ON vectors USING hnsw (embedding vector_cosine_ops);
         CREATE TABLE images(
             key BIGSERIAL PRIMARY KEY,
             path TEXT NOT NULL UNIQUE,
             hash TEXT NOT NULL REFERENCES vectors(hash),
             size BIGINT NOT NULL,
             mtime BIGINT NOT NULL,
             label TEXT NOT NULL);
         CREATE INDEX images_hash ON images(hash);"
        ),
        // Version 2: trained models, joint embeddings, uploaded originals;
        // embeddings kept in the row (a 1280-d vector is 5 KB: TOASTed
        // out of line by default, which made every distance a detoast; a
        // 1000-image exact scan went from 3.5 to 1.6 ms). Rows written
        // before keep their storage until `VACUUM FULL vectors`.
        "ALTER TABLE vectors ALTER COLUMN embedding SET STORAGE PLAIN;
         CREATE TABLE models(
             id BIGSERIAL PRIMARY KEY,
             info TEXT NOT NULL,
             weights BYTEA NOT NULL,
             report TEXT NOT NULL,
             created TIMESTAMPTZ NOT NULL DEFAULT now());
         CREATE TABLE joint(
             model BIGINT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
             hash TEXT NOT NULL REFERENCES vectors(hash) ON DELETE CASCADE,
             embedding vector NOT NULL,
             PRIMARY KEY (model, hash));
         CREATE INDEX joint_hash ON joint(hash);
         CREATE TABLE blobs(
             hash TEXT PRIMARY KEY REFERENCES vectors(hash) ON DELETE CASCADE,
             bytes BYTEA NOT NULL);"
            .to_owned(),
        // Version 3: each content's vector on the text sides that need no
        // model row of their own (zero-shot, fused), keyed by the
        // projection's fingerprint, with a partial HNSW index per fingerprint.
        "CREATE TABLE text_vectors(
             side TEXT NOT NULL,
             fingerprint TEXT NOT NULL,
             hash TEXT NOT NULL REFERENCES vectors(hash) ON DELETE CASCADE,
             embedding vector NOT NULL,
             PRIMARY KEY (fingerprint, hash));
         CREATE INDEX text_vectors_hash ON text_vectors(hash);"
            .to_owned(),
        // Version 4: each image's photo facts (filled in by `index` for
        // images indexed before), and an index for date filters and browsing.
        "ALTER TABLE images ADD COLUMN taken BIGINT, ADD COLUMN camera TEXT,
             ADD COLUMN width INTEGER, ADD COLUMN height INTEGER;
         CREATE INDEX images_taken ON images(taken);"
            .to_owned(),
        // Version 5: paths in byte order, for `--under` (a range scan).
        "CREATE INDEX images_path_c ON images ((path COLLATE \"C\"));".to_owned(),
        // Version 6: each image's embedding at half precision in its own row
        // (2.5 KB, kept in the row), so a filtered search scores the images
        // that pass without a join to `vectors` (`nearest_by`). Rows are
        // wider now, so a scan for a label (0.3 -> 2.4 ms per 10k) gets an index.
        format!(
            "CREATE INDEX images_label ON images(label);
             ALTER TABLE images ADD COLUMN half halfvec({dim});
             ALTER TABLE images ALTER COLUMN half SET STORAGE PLAIN;
             UPDATE images i SET half = v.embedding::halfvec({dim}) FROM vectors v WHERE v.hash = i.hash;"
        ),
        // Version 7: the image index built again with a wider candidate
        // list while linking (see `HNSW_BUILD_LIST`).
        format!("DROP INDEX IF EXISTS vectors_embedding_hnsw; {};", vectors_hnsw()),
        // Version 8: the paths' index holds each image's key and content
        // too, so a narrow folder filter's images come from the index alone
        // (an index-only scan: 3000 of 30k rows in 0.5 ms, where visiting
        // the 2.5 KB rows took 1.2 ms), for the vectors a server keeps.
        "CREATE INDEX IF NOT EXISTS images_path_hash ON images ((path COLLATE \"C\")) INCLUDE (path, hash, key);
         DROP INDEX IF EXISTS images_path_c;"
            .to_owned(),
        // Version 9: an image's row (2.7 KB with its half-precision
        // embedding) is past PostgreSQL's 2 KB target, which moved every
        // text value longer than a pointer out of line: a 64-digit hash or
        // a path cost a TOAST lookup each read (600 images named by date
        // took 4.4 ms, 0.8 of them the scan). They stay in the row now
        // (`MAIN`: out of line only past a page); adding the stored
        // `content` column rewrites the table, so rows stored before
        // follow (checked: TOAST 216 kB -> 0). And the indexes hold what a
        // filter reads: by content, the filters' columns, so the
        // iterative walk checks each candidate in the index alone (5 us a
        // probe where the row took 10 us: a 25 % camera filter over 10k,
        // 1.5 -> 1.3 ms); by path, date and label, the images' contents,
        // as hashes (for the SQL plans) and as 64-bit ids (`content`),
        // which a server names from the index alone (`cache`: 3000 images'
        // ids in 0.56 ms; with their keys 1.0 ms, with keys and 64-digit
        // hashes 1.9 ms).
        "ALTER TABLE images ALTER COLUMN path SET STORAGE MAIN, ALTER COLUMN hash SET STORAGE MAIN,
             ALTER COLUMN label SET STORAGE MAIN, ALTER COLUMN camera SET STORAGE MAIN;
         ALTER TABLE images ADD COLUMN IF NOT EXISTS content BIGINT
             GENERATED ALWAYS AS (hashtextextended(hash, 0)) STORED;
         DROP INDEX IF EXISTS images_hash;
         DROP INDEX IF EXISTS images_path_hash;
         DROP INDEX IF EXISTS images_taken;
         DROP INDEX IF EXISTS images_label;
         CREATE INDEX IF NOT EXISTS images_hash_filters ON images(hash) INCLUDE (path, label, taken, camera);
         CREATE INDEX IF NOT EXISTS images_path_contents ON images ((path COLLATE \"C\")) INCLUDE (hash, content);
         CREATE INDEX IF NOT EXISTS images_taken_contents ON images(taken) INCLUDE (hash, content);
         CREATE INDEX IF NOT EXISTS images_label_contents ON images(label) INCLUDE (hash, content);"
            .to_owned(),
        // Version 10: the image search walks an HNSW index over the images'
        // own half-precision embeddings, not over `vectors`: a filter is
        // then checked on the row the walk reaches, where each candidate
        // was a probe of `images` by hash (a 50 % filter that follows the
        // content, 10k rows in pgbench: p50 0.63-0.69 ms against
        // 1.20-1.38; unfiltered 0.43-0.46 ms against 0.57-0.61, with no
        // join to `images`). The index on `vectors` is no longer read.
        format!("DROP INDEX IF EXISTS vectors_embedding_hnsw; {};", images_hnsw()),
    ]
}

/// The candidate list pgvector's HNSW indexes link with (`ef_construction`).
/// Rows arrive in walk order, a folder's after another's, and a folder's
/// photos look alike; a graph linked in that order with pgvector's default
/// (64) found 0.946-0.958 of the true 10 nearest over 10k clustered rows
/// stored folder by folder (1.000 for the same rows in no order), a 384-d
/// text side over them 0.932. 128 finds 0.993 and builds 1.6x as long
/// (2.1 s against 1.3 s for those rows), 200 finds 0.999 at 2x
/// (`IMGSEARCH_BENCH_PG=... cargo bench --bench filters`).
pub(super) const HNSW_BUILD_LIST: usize = 128;

/// Creates pgvector's HNSW index over the image embeddings, as schema 7 had it.
fn vectors_hnsw() -> String {
    format!(
        "CREATE INDEX vectors_embedding_hnsw ON vectors USING hnsw (embedding vector_cosine_ops) \
         WITH (ef_construction = {HNSW_BUILD_LIST})"
    )
}

/// Creates pgvector's HNSW index over each image's half-precision
/// embedding, which image searches walk (schema 10 on).
fn images_hnsw() -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS images_half_hnsw ON images USING hnsw (half halfvec_cosine_ops) \
         WITH (ef_construction = {HNSW_BUILD_LIST})"
    )
}

impl PgStore {
    /// Connects to `url`, applies pending migrations, and checks that the
    /// database holds embeddings of `backbone` with `dim` dimensions.
    pub fn open(url: &str, backbone: &str, dim: usize) -> Result<Self> {
        let mut config: postgres::Config =
            url.parse().map_err(|e| Error::Msg(format!("{}: not a PostgreSQL URL: {e}", redact(url))))?;
        // Every connection starts with the default candidate list and walks
        // iteratively (a filtered walk goes on until k pass; an unfiltered
        // one stops at k as before), so a search needs no transaction of
        // its own to set them (3 round trips). In relaxed order: the walk
        // keeps rows it meets late instead of dropping them, and the outer
        // query sorts anyway. Over 10k rows in walk order, recall@10 0.987
        // -> 0.999 unfiltered, 0.943 -> 0.957 through a 25 % filter (1.90x
        // the unfiltered p50 against 2.03x).
        config.options(&format!(
            "-c statement_timeout={STATEMENT_TIMEOUT_MS} -c hnsw.ef_search={DEFAULT_EF_SEARCH} \
             -c hnsw.iterative_scan=relaxed_order"
        ));
        // Short: while the server is down, requests answer 503 in seconds, not a minute.
        config.connect_timeout(Duration::from_secs(3));
        let name = describe(&config);
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .connection_timeout(POOL_TIMEOUT)
            .build(Manager(PostgresConnectionManager::new(config, NoTls)))
            .map_err(|e| Error::Store {
                path: name.clone().into(),
                reason: format!(
                    "cannot connect to PostgreSQL at {name}: {e}; is the server running and the URL right?"
                ),
            })?;
        let store = Self {
            pool,
            name,
            dim,
            ef_search: DEFAULT_EF_SEARCH,
            exact: Default::default(),
            shares: Default::default(),
            keep: Default::default(),
            cache: Default::default(),
        };
        store.migrate(backbone, dim)?;
        Ok(store)
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Store { path: self.name.clone().into(), reason: e.to_string() }
    }

    /// A database error with the server's own message (`db error` alone says nothing).
    fn pg_err(&self, e: postgres::Error) -> Error {
        self.err(pg_message(&e))
    }

    fn conn(&self) -> Result<Conn> {
        self.pool.get().map_err(|e| Error::Unavailable {
            what: format!("PostgreSQL at {}", self.name),
            reason: format!("no connection within {} s ({e})", POOL_TIMEOUT.as_secs()),
        })
    }

    /// Whether the database answers now (`/readyz`).
    pub fn ping(&self) -> Result<()> {
        let mut conn = self.conn()?;
        conn.simple_query("SELECT 1")
            .map(drop)
            .map_err(|e| Error::Unavailable { what: format!("PostgreSQL at {}", self.name), reason: pg_message(&e) })
    }

    /// Runs `f` on a pooled connection, again on a fresh one when the
    /// connection was lost. Only for idempotent work.
    fn retry<T>(&self, mut f: impl FnMut(&mut Conn) -> std::result::Result<T, postgres::Error>) -> Result<T> {
        let mut last = self.err("no attempt made");
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            // The pool already tried for its timeout: the server is down, say so now.
            let mut conn = self.conn()?;
            match f(&mut conn) {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) => {
                    last = Error::Unavailable {
                        what: format!("PostgreSQL at {}", self.name),
                        reason: format!("lost the connection: {}", pg_message(&e)),
                    }
                }
                Err(e) => return Err(self.pg_err(e)),
            }
        }
        Err(last)
    }

    fn migrate(&self, backbone: &str, dim: usize) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(|e| self.pg_err(e))?;
        // One migrator at a time, across processes. A migration may build
        // an HNSW index over every image (minutes for millions), past the
        // statement timeout searches have, and so may the wait for it.
        tx.batch_execute("SET LOCAL statement_timeout = 0").map_err(|e| self.pg_err(e))?;
        tx.execute("SELECT pg_advisory_xact_lock(7355608)", &[]).map_err(|e| self.pg_err(e))?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)")
            .map_err(|e| self.pg_err(e))?;
        let current: i32 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .map_err(|e| self.pg_err(e))?
            .get(0);
        if current > SCHEMA_VERSION {
            return Err(self.err(format!(
                "the database's schema is version {current}, newer than this imgsearch understands (version \
                 {SCHEMA_VERSION}); upgrade imgsearch"
            )));
        }
        for (i, sql) in migrations(dim).iter().enumerate().skip(current as usize) {
            if current > 0 {
                // An upgrade: some rebuild an index, minutes for millions of rows.
                tracing::info!(
                    "{}: moving the schema to version {} (once; other processes wait for it)",
                    self.name,
                    i + 1
                );
            }
            tx.batch_execute(sql).map_err(|e| self.err(format!("migration {}: {e}", i + 1)))?;
            tx.execute("INSERT INTO schema_version VALUES ($1)", &[&(i as i32 + 1)]).map_err(|e| self.pg_err(e))?;
        }
        let setting = |tx: &mut postgres::Transaction, name: &str| -> Result<Option<String>> {
            Ok(tx
                .query_opt("SELECT value FROM settings WHERE name = $1", &[&name])
                .map_err(|e| self.pg_err(e))?
                .map(|r| r.get(0)))
        };
        match (setting(&mut tx, "backbone")?, setting(&mut tx, "dim")?) {
            (Some(b), Some(d)) if b != backbone || d != dim.to_string() => {
                return Err(self.err(format!(
                    "built with backbone {b} ({d}-d); pass --backbone {b}, or use another database for {backbone}"
                )));
            }
            (Some(_), Some(_)) => {}
            _ => {
                tx.execute(
                    "INSERT INTO settings VALUES ('backbone', $1), ('dim', $2) ON CONFLICT (name) DO NOTHING",
                    &[&backbone, &dim.to_string()],
                )
                .map_err(|e| self.pg_err(e))?;
            }
        }
        let version = setting(&mut tx, "embedding")?.and_then(|v| v.parse::<u32>().ok()).unwrap_or(1);
        if version < crate::backbone::EMBEDDING_VERSION {
            self.centre_old_vectors(&mut tx, backbone, dim)?;
            tx.execute(
                "INSERT INTO settings VALUES ('embedding', $1) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&crate::backbone::EMBEDDING_VERSION.to_string()],
            )
            .map_err(|e| self.pg_err(e))?;
        }
        tx.commit().map_err(|e| self.pg_err(e))
    }

    /// Moves the vectors of a database written before centred embeddings
    /// ([`crate::backbone::centre`]) to them, inside the migration's
    /// transaction (all or nothing): each row's unit vector times its norm,
    /// minus the backbone's centre, normalised again; the half-precision
    /// copies follow, and the HNSW index is built again after the load.
    /// The trained model's joint rows stay: its first layer takes the
    /// centre into its bias, so they are what it gives now.
    fn centre_old_vectors(&self, tx: &mut postgres::Transaction<'_>, backbone: &str, dim: usize) -> Result<()> {
        let pg = |e| self.pg_err(e);
        if tx.query_opt("SELECT 1 FROM vectors LIMIT 1", &[]).map_err(pg)?.is_none() {
            return Ok(());
        }
        let backbone = crate::backbone::centre_for_rows(backbone, dim).map_err(|reason| self.err(reason))?;
        let rows: i64 = tx.query_one("SELECT count(*) FROM vectors", &[]).map_err(pg)?.get(0);
        tracing::info!(
            "{}: moving {rows} stored vectors to centred embeddings and rebuilding their index (once; other \
             processes wait for it; nothing is embedded again)",
            self.name
        );
        // Each row's new half-precision copy would otherwise be linked into
        // the graph one at a time.
        tx.batch_execute("DROP INDEX IF EXISTS vectors_embedding_hnsw; DROP INDEX IF EXISTS images_half_hnsw")
            .map_err(pg)?;
        let select = tx.prepare("SELECT hash, embedding, norm FROM vectors").map_err(pg)?;
        let update = tx.prepare("UPDATE vectors SET embedding = $2, norm = $3 WHERE hash = $1").map_err(pg)?;
        let portal = tx.bind(&select, &[]).map_err(pg)?;
        loop {
            let rows = tx.query_portal(&portal, 1024).map_err(pg)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let (hash, v, norm): (String, Vector, f32) = (r.get(0), r.get(1), r.get(2));
                let (moved, norm) = crate::backbone::recentre(backbone, v.as_slice(), norm);
                tx.execute(&update, &[&hash, &Vector::from(moved), &norm]).map_err(pg)?;
            }
        }
        // An open portal on `vectors` would keep the index from being built.
        drop(portal);
        tx.batch_execute(&format!(
            "UPDATE images i SET half = v.embedding::halfvec({dim}) FROM vectors v WHERE v.hash = i.hash;
             {};",
            images_hnsw()
        ))
        .map_err(pg)?;
        Ok(())
    }

    fn records(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<Vec<ImageRecord>> {
        self.retry(|c| c.query(sql, params)).map(|rows| rows.iter().map(record).collect())
    }

    /// Sets pgvector's HNSW candidate list for this process's searches.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.ef_search = ef;
    }

    /// Makes this process's searches exact scans (ground truth; slow on large stores).
    pub fn set_exact(&self, exact: bool) {
        self.exact.store(exact, std::sync::atomic::Ordering::Relaxed);
    }
}

impl PgStore {
    /// Refreshes `table`'s planner statistics after `added` rows went in,
    /// when they are a tenth of it or more (autovacuum's threshold, which it
    /// acts on only within a minute). A text side just filled was taken for
    /// 50 rows of 10k, so a text search through a 0.5 % label filter
    /// hash-joined all 10k: 10 ms (`IMGSEARCH_BENCH_KIND=text cargo bench
    /// --bench filters` with IMGSEARCH_BENCH_PG).
    fn analyze_after(&self, table: &str, added: usize) -> Result<()> {
        if added == 0 {
            return Ok(());
        }
        let rows: f32 = self
            .retry(|c| c.query_one("SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)", &[&table]))?
            .get(0);
        if rows < 0.0 || added as f32 > 50.0 + 0.1 * rows {
            // Not the owner: PostgreSQL skips the table with a warning.
            self.retry(|c| c.batch_execute(&format!("ANALYZE {table}")))?;
        }
        Ok(())
    }
}

/// An `images` row's `half` column, from the stored vector of hash `$2`.
const HALF: &str = "(SELECT embedding::halfvec FROM vectors WHERE hash = $2)";

/// `v` at unit length as a pgvector value; `None` for a zero vector.
fn unit_vector(v: &[f32]) -> Option<Vector> {
    let mut unit = v.to_vec();
    (crate::vector::normalize(&mut unit) > 0.0).then(|| Vector::from(unit))
}

/// The server's message for a database error (with its detail), else the error itself.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => e.to_string(),
    }
}

/// A lost connection, or a conflict with another writer that a retry of the
/// same (idempotent) work resolves.
fn retryable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    let conflict = e.code().is_some_and(|c| {
        [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED, SqlState::FOREIGN_KEY_VIOLATION]
            .contains(c)
    });
    e.is_closed() || conflict || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// `user@host:port/dbname`, without the password.
fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

/// The URL with any password replaced.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

const COLUMNS: &str = "SELECT i.key, i.path, i.hash, i.size, i.mtime, i.label, v.id, v.norm, i.taken, i.camera, i.width, i.height FROM images i JOIN vectors v ON v.hash = i.hash";

fn record(r: &postgres::Row) -> ImageRecord {
    record_at(r, 0)
}

/// The record in the 8 columns of [`COLUMNS`], starting at column `at`.
fn record_at(r: &postgres::Row, at: usize) -> ImageRecord {
    ImageRecord {
        key: r.get(at),
        path: r.get(at + 1),
        hash: r.get(at + 2),
        size: r.get::<_, i64>(at + 3) as u64,
        mtime: r.get(at + 4),
        label: r.get(at + 5),
        row: r.get::<_, i64>(at + 6) as u64,
        norm: r.get(at + 7),
        meta: crate::metadata::PhotoMeta {
            taken: r.get(at + 8),
            camera: r.get(at + 9),
            width: r.get::<_, Option<i32>>(at + 10).map(|w| w as u32),
            height: r.get::<_, Option<i32>>(at + 11).map(|h| h as u32),
        },
    }
}

impl ImageStore for PgStore {
    fn describe(&self) -> String {
        format!("PostgreSQL {}", self.name)
    }

    fn searches_a_graph(&self) -> bool {
        true
    }

    fn set_exact(&self, exact: bool) {
        PgStore::set_exact(self, exact)
    }

    fn keep_vectors(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        PgStore::blob(self, hash)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn all(&self) -> Result<Vec<ImageRecord>> {
        self.records(&format!("{COLUMNS} ORDER BY i.key"), &[])
    }

    fn by_key(&self, key: i64) -> Result<Option<ImageRecord>> {
        Ok(self.records(&format!("{COLUMNS} WHERE i.key = $1"), &[&key])?.pop())
    }

    fn list(&self, sort: Sort, cursor: Option<Cursor>, limit: usize, filter: &Filter) -> Result<Vec<ImageRecord>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let c = cursor.unwrap_or(Cursor { taken: Some(i64::MAX), key: i64::MAX });
        let (taken, key) = (c.taken.unwrap_or(i64::MIN), c.key);
        let (conditions, values) = text::filter_sql(filter, 4);
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&taken, &key, &limit];
        params.extend(values.iter().map(|v| v.as_ref() as &(dyn postgres::types::ToSql + Sync)));
        let filtered = if conditions.is_empty() { String::new() } else { format!("AND {conditions}") };
        let (after, order) = match sort {
            Sort::Added => ("i.key < $2 AND $1::bigint IS NOT NULL", "i.key DESC"),
            Sort::Date => (
                "(COALESCE(i.taken, -9223372036854775808), i.key) < ($1, $2)",
                "COALESCE(i.taken, -9223372036854775808) DESC, i.key DESC",
            ),
        };
        self.records(&format!("{COLUMNS} WHERE {after} {filtered} ORDER BY {order} LIMIT $3"), &params)
    }

    fn by_path(&self, path: &str) -> Result<Option<ImageRecord>> {
        Ok(self.records(&format!("{COLUMNS} WHERE i.path = $1"), &[&path])?.pop())
    }

    fn by_hash(&self, hash: &str) -> Result<Vec<ImageRecord>> {
        self.records(&format!("{COLUMNS} WHERE i.hash = $1 ORDER BY i.key"), &[&hash])
    }

    fn embedding(&self, image: &ImageRecord) -> Result<Vec<f32>> {
        let row = self.retry(|c| c.query_opt("SELECT embedding, norm FROM vectors WHERE hash = $1", &[&image.hash]))?;
        let row = row.ok_or_else(|| self.err(format!("no vector for {} (deleted meanwhile?)", image.path)))?;
        let (v, norm): (Vector, f32) = (row.get(0), row.get(1));
        Ok(v.to_vec().into_iter().map(|x| x * norm).collect())
    }

    fn len(&self) -> Result<usize> {
        let n: i64 = self.retry(|c| c.query_one("SELECT COUNT(*) FROM images", &[]))?.get(0);
        Ok(n as usize)
    }

    fn add_batch(&mut self, images: &[NewImage]) -> Result<Vec<i64>> {
        // Unit vectors and norms, by content hash.
        let mut fresh: Vec<(&str, f32, Vector)> = Vec::new();
        for img in images {
            if let Some((unit, norm)) = img.unit_embedding(self.dim)? {
                fresh.push((&img.hash, norm, Vector::from(unit)));
            }
        }
        // One transaction; upserts, so a retry after a lost connection is safe.
        self.retry(|c| {
            let mut tx = c.transaction()?;
            let insert_vector = tx.prepare(
                "INSERT INTO vectors(hash, norm, embedding) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
            )?;
            for (hash, norm, v) in &fresh {
                tx.execute(&insert_vector, &[hash, norm, v])?;
            }
            let insert = tx.prepare(&format!(
                "INSERT INTO images(path, hash, size, mtime, label, taken, camera, width, height, half)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {HALF})
                 ON CONFLICT (path) DO UPDATE SET hash = excluded.hash, size = excluded.size,
                     mtime = excluded.mtime, label = excluded.label, taken = excluded.taken,
                     camera = excluded.camera, width = excluded.width, height = excluded.height,
                     half = excluded.half
                 RETURNING key"
            ))?;
            // The contents these paths held before: a replaced one may be orphaned.
            let paths: Vec<&str> = images.iter().map(|i| i.path.as_str()).collect();
            let before: Vec<String> =
                tx.query("SELECT hash FROM images WHERE path = ANY($1)", &[&paths])?.iter().map(|r| r.get(0)).collect();
            let mut keys = Vec::with_capacity(images.len());
            for img in images {
                let (m, size) = (&img.meta, img.size as i64);
                let (w, h) = (m.width.map(|w| w as i32), m.height.map(|h| h as i32));
                let row = tx.query_one(
                    &insert,
                    &[&img.path, &img.hash, &size, &img.mtime, &img.label, &m.taken, &m.camera, &w, &h],
                )?;
                keys.push(row.get(0));
            }
            tx.execute(GC_VECTORS, &[&before])?;
            tx.commit()?;
            Ok(keys)
        })
    }

    fn update_location(&mut self, key: i64, path: &str, size: u64, mtime: i64, label: &str) -> Result<()> {
        self.retry(|c| {
            c.execute(
                "UPDATE images SET path = $2, size = $3, mtime = $4, label = $5 WHERE key = $1",
                &[&key, &path, &(size as i64), &mtime, &label],
            )
        })?;
        Ok(())
    }

    fn update_meta(&mut self, facts: &[(i64, crate::metadata::PhotoMeta)]) -> Result<()> {
        self.retry(|c| {
            let mut tx = c.transaction()?;
            let update =
                tx.prepare("UPDATE images SET taken = $2, camera = $3, width = $4, height = $5 WHERE key = $1")?;
            for (key, m) in facts {
                let (w, h) = (m.width.map(|w| w as i32), m.height.map(|h| h as i32));
                tx.execute(&update, &[key, &m.taken, &m.camera, &w, &h])?;
            }
            tx.commit()
        })
    }

    fn delete(&mut self, keys: &[i64]) -> Result<()> {
        self.retry(|c| {
            let mut tx = c.transaction()?;
            let gone: Vec<String> = tx
                .query("DELETE FROM images WHERE key = ANY($1) RETURNING hash", &[&keys])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            tx.execute(GC_VECTORS, &[&gone])?;
            tx.commit()
        })
    }

    /// Refreshes the planner's statistics of the image tables when they
    /// have none or a tenth of their rows changed since (autovacuum's own
    /// threshold, which it acts on only within a minute; the count of
    /// changes itself can lag a second): right after an `index`, a search's
    /// join to its 10 images otherwise became a hash join over every
    /// image (0.3 ms to 3.5 ms per 10k rows). `images` is vacuumed
    /// instead when a tenth of its pages are not marked all-visible.
    fn upkeep(&self) -> Result<Option<usize>> {
        let stale: Vec<String> = self
            .retry(|c| {
                c.query(
                    "SELECT s.relname::text FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
                     WHERE s.relname IN ('images', 'vectors') AND s.schemaname = current_schema()
                       AND (c.reltuples < 0 OR s.n_mod_since_analyze > 50 + 0.1 * c.reltuples
                            OR (s.relname = 'images' AND c.relallvisible < 0.9 * c.relpages))",
                    &[],
                )
            })?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for table in stale {
            // Not the owner: PostgreSQL skips the table with a warning.
            // `images` is vacuumed too: pages marked all-visible let a
            // folder filter read its contents from the paths' index alone
            // (autovacuum does, a while after an insert-only run; when its
            // analyze came first, a tenth of the pages not all-visible
            // sends it here all the same).
            let verb = if table == "images" { "VACUUM (ANALYZE)" } else { "ANALYZE" };
            self.retry(|c| c.batch_execute(&format!("{verb} {table}")))?;
        }
        Ok(None)
    }

    fn ping(&self) -> Result<()> {
        PgStore::ping(self)
    }

    fn search(&self, query: &StoreQuery<'_>, want: usize, filter: &Filter) -> Result<Vec<(ImageRecord, f32)>> {
        match query {
            StoreQuery::Cnn(q) => {
                let Some(q) = unit_vector(q) else { return Ok(Vec::new()) };
                self.nearest_by(
                    "SELECT id, hash, norm, {order} AS d FROM vectors WHERE TRUE {filter}
                     ORDER BY {order} LIMIT {limit}",
                    "embedding <=> $1",
                    &[&q],
                    want,
                    filter,
                    // Cast once (an init plan), not once a row as a generic plan
                    // would; `$1` named a vector here, since a walk's statement
                    // meets this expression first.
                    text::Narrow {
                        half: Some("i.half <=> (SELECT $1::vector::halfvec)"),
                        half_indexed: true,
                        here: Some(text::Local {
                            space: "cnn".into(),
                            query: q.as_slice(),
                            fetch: text::fetch_sql("vectors v ON"),
                        }),
                    },
                )
            }
            StoreQuery::Weighted { embedding, weights } => self.nearest_weighted(embedding, weights, want, filter),
            StoreQuery::Text { side, vector } => match trained_model(side) {
                Some(id) => self.nearest_joint(id, vector, want, filter),
                None => self.nearest_text(&side.fingerprint_hex(), vector, want, filter),
            },
        }
    }

    fn sync_text_side(&self, side: &TextSide<'_>, hashes: Option<&[String]>) -> Result<usize> {
        let (p, out_dim) = (side.projection, side.projection.out_dim());
        let (table, added) = match trained_model(side) {
            Some(id) => ("joint", self.sync_joint(id, out_dim, hashes, &|x| p.project(x))?),
            None => (
                "text_vectors",
                self.sync_text(side.name, &side.fingerprint_hex(), out_dim, hashes, &|x| p.project(x))?,
            ),
        };
        self.analyze_after(table, added)?;
        Ok(added)
    }

    fn text_side_len(&self, side: &TextSide<'_>) -> Result<usize> {
        match trained_model(side) {
            Some(_) => self.joint_len(),
            None => self.text_len(&side.fingerprint_hex()),
        }
    }

    fn model_id(&self) -> Result<Option<i64>> {
        PgStore::model_id(self)
    }

    fn model(&self) -> Result<Option<StoredModel>> {
        PgStore::model(self)
    }

    fn save_model(&self, model: &NewModel<'_>, projection: &dyn Projection) -> Result<SavedModel> {
        let out_dim = projection.out_dim();
        let (id, rows) =
            PgStore::save_model(self, model.info, model.weights, model.report, out_dim, &|x| projection.project(x))?;
        Ok(SavedModel { id, rows, location: format!("{} (model {id})", self.describe()) })
    }

    fn add_upload(&mut self, image: &NewImage, bytes: &[u8]) -> Result<i64> {
        PgStore::add_upload(self, image, bytes)
    }

    fn keeps_uploads(&self) -> bool {
        true
    }

    fn verify(&self, _sides: &[TextSide<'_>]) -> Result<Checked> {
        Err(self.err("verify checks a folder store; PostgreSQL checks its own pages (its data checksums, amcheck)"))
    }
}

/// The trained model whose `joint` rows hold `side` (the trained side), else `None`: a projection's `text_vectors`.
fn trained_model(side: &TextSide<'_>) -> Option<i64> {
    side.model_id.filter(|_| side.name == "trained")
}

/// Drops the vectors of these hashes that no image uses any more.
const GC_VECTORS: &str =
    "DELETE FROM vectors v WHERE v.hash = ANY($1) AND NOT EXISTS (SELECT 1 FROM images i WHERE i.hash = v.hash)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_folders_and_passwords_hidden() {
        assert!(is_url("postgres://u@h/db") && is_url("postgresql://h/db") && !is_url("./.imgsearch"));
        assert_eq!(redact("postgres://me:secret@db.example:5432/x"), "postgres://me:***@db.example:5432/x");
        assert_eq!(redact("postgres://me@h/x"), "postgres://me@h/x");
    }
}
