//! The shared store: PostgreSQL with pgvector, for several indexers and
//! `serve` replicas on one database.
//!
//! - `vectors`: one row per distinct content (sha256 unique), the unit
//!   embedding as a pgvector column with an HNSW index (cosine), and its norm.
//!   Two indexers that meet the same file store its vector once.
//! - `images`: key, path (unique), hash, size, mtime, label.
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
//! Connections come from an r2d2 pool; each sets a statement timeout. Reads
//! and the (idempotent, upserting) batch writes are retried after a lost
//! connection; a batch is one transaction, so a retry neither loses nor
//! duplicates anything.

use std::time::Duration;

use pgvector::Vector;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use super::{ImageRecord, ImageStore, NewImage};
use crate::{Error, Result};

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
type Conn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i32 = 3;

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
    ]
}

/// A trained joint model as the database keeps it.
#[derive(Debug, Clone)]
pub struct StoredModel {
    pub id: i64,
    /// `model.json`.
    pub info: String,
    /// `model.safetensors`.
    pub weights: Vec<u8>,
}

/// Projects raw CNN embeddings (`[n, dim]`, row-major) into the joint space.
pub type Project<'a> = &'a dyn Fn(&[f32]) -> Result<Vec<f32>>;

/// Rows read and projected per round trip when filling joint embeddings.
const JOINT_BATCH: i64 = 1024;

impl PgStore {
    /// Connects to `url`, applies pending migrations, and checks that the
    /// database holds embeddings of `backbone` with `dim` dimensions.
    pub fn open(url: &str, backbone: &str, dim: usize) -> Result<Self> {
        let mut config: postgres::Config =
            url.parse().map_err(|e| Error::Msg(format!("{}: not a PostgreSQL URL: {e}", redact(url))))?;
        // Every connection starts with the default candidate list, so a
        // search needs no transaction of its own to set it (3 round trips).
        config.options(&format!("-c statement_timeout={STATEMENT_TIMEOUT_MS} -c hnsw.ef_search={DEFAULT_EF_SEARCH}"));
        // Short: while the server is down, requests answer 503 in seconds, not a minute.
        config.connect_timeout(Duration::from_secs(3));
        let name = describe(&config);
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .connection_timeout(POOL_TIMEOUT)
            .build(PostgresConnectionManager::new(config, NoTls))
            .map_err(|e| Error::Store {
                path: name.clone().into(),
                reason: format!(
                    "cannot connect to PostgreSQL at {name}: {e}; is the server running and the URL right?"
                ),
            })?;
        let store = Self { pool, name, dim, ef_search: DEFAULT_EF_SEARCH, exact: Default::default() };
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
        // One migrator at a time, across processes.
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
        tx.commit().map_err(|e| self.pg_err(e))
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

    /// The id of the current (newest) joint model, if one was trained.
    pub fn model_id(&self) -> Result<Option<i64>> {
        Ok(self.retry(|c| c.query_one("SELECT MAX(id) FROM models", &[]))?.get(0))
    }

    /// The current joint model.
    pub fn model(&self) -> Result<Option<StoredModel>> {
        let row = self.retry(|c| c.query_opt("SELECT id, info, weights FROM models ORDER BY id DESC LIMIT 1", &[]))?;
        Ok(row.map(|r| StoredModel { id: r.get(0), info: r.get(1), weights: r.get(2) }))
    }

    /// The training report of the current model (JSON).
    pub fn model_report(&self) -> Result<Option<String>> {
        let row = self.retry(|c| c.query_opt("SELECT report FROM models ORDER BY id DESC LIMIT 1", &[]))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Makes a trained model the current one for every process on this
    /// database. One transaction writes the model row, every stored
    /// content's joint embedding (`project`, `out_dim` wide) and their
    /// partial HNSW index; searches meanwhile go on with the previous model
    /// (they read other rows and another index). When it commits, every
    /// process sees the new model; then the previous models' rows and
    /// indexes are dropped. Returns the model id and the rows projected.
    pub fn save_model(
        &self,
        info: &str,
        weights: &[u8],
        report: &str,
        out_dim: usize,
        project: Project<'_>,
    ) -> Result<(i64, usize)> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(|e| self.pg_err(e))?;
        let run = |tx: &mut postgres::Transaction| -> std::result::Result<(i64, usize), Error> {
            let pg = |e: postgres::Error| self.pg_err(e);
            // One trainer at a time.
            tx.execute("SELECT pg_advisory_xact_lock(7355609)", &[]).map_err(pg)?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO models(info, weights, report) VALUES ($1, $2, $3) RETURNING id",
                    &[&info, &weights, &report],
                )
                .map_err(pg)?
                .get(0);
            let select = tx.prepare("SELECT hash, embedding, norm FROM vectors").map_err(pg)?;
            let portal = tx.bind(&select, &[]).map_err(pg)?;
            let insert = tx.prepare("INSERT INTO joint(model, hash, embedding) VALUES ($1, $2, $3)").map_err(pg)?;
            let mut total = 0;
            loop {
                let rows = tx.query_portal(&portal, JOINT_BATCH as i32).map_err(pg)?;
                if rows.is_empty() {
                    break;
                }
                let (hashes, projected) = self.project_rows(&rows, out_dim, project)?;
                for (hash, v) in hashes.iter().zip(projected) {
                    tx.execute(&insert, &[&id, hash, &v]).map_err(pg)?;
                }
                total += rows.len();
            }
            // Built after the load: faster than maintaining it row by row.
            tx.batch_execute(&format!(
                "CREATE INDEX joint_hnsw_{id} ON joint USING hnsw ((embedding::vector({out_dim})) vector_cosine_ops) WHERE model = {id}"
            ))
            .map_err(pg)?;
            Ok((id, total))
        };
        let (id, total) = run(&mut tx)?;
        tx.commit().map_err(|e| self.pg_err(e))?;
        // The previous models' joint rows and indexes are no longer read.
        self.retry(|c| {
            let old: Vec<i64> =
                c.query("SELECT id FROM models WHERE id < $1", &[&id])?.iter().map(|r| r.get(0)).collect();
            for m in old {
                c.batch_execute(&format!("DROP INDEX IF EXISTS joint_hnsw_{m}"))?;
            }
            c.execute("DELETE FROM joint WHERE model < $1", &[&id])?;
            // Fresh statistics, or the planner guesses a handful of rows
            // for the new model and sorts them all instead of using its index.
            c.batch_execute("ANALYZE joint")
        })?;
        Ok((id, total))
    }

    /// The hashes of `rows` (`hash, embedding, norm`) and their joint
    /// embeddings, unit length (a zero projection stays zero).
    fn project_rows(
        &self,
        rows: &[postgres::Row],
        out_dim: usize,
        project: Project<'_>,
    ) -> Result<(Vec<String>, Vec<Vector>)> {
        let mut raw = Vec::with_capacity(rows.len() * self.dim);
        let mut hashes = Vec::with_capacity(rows.len());
        for r in rows {
            let (v, norm): (Vector, f32) = (r.get(1), r.get(2));
            raw.extend(v.as_slice().iter().map(|x| x * norm));
            hashes.push(r.get::<_, String>(0));
        }
        let out = project(&raw)?;
        if out.len() != rows.len() * out_dim {
            return Err(self.err(format!(
                "the joint model gave {} values for {} rows of {out_dim}",
                out.len(),
                rows.len()
            )));
        }
        Ok((hashes, out.chunks_exact(out_dim).map(|v| Vector::from(crate::vector::unit(v))).collect()))
    }

    /// Gives stored contents without a joint embedding one under model
    /// `model_id` (all of them, or only `hashes`). Rows are written only
    /// while `model_id` is still the current model, so a process that
    /// missed a retrain cannot mix spaces. Idempotent. Returns rows added.
    pub fn sync_joint(
        &self,
        model_id: i64,
        out_dim: usize,
        hashes: Option<&[String]>,
        project: Project<'_>,
    ) -> Result<usize> {
        let mut added = 0;
        loop {
            if self.model_id()? != Some(model_id) {
                // Retrained meanwhile: the new model's rows are its trainer's to write.
                return Ok(added);
            }
            let rows = self.retry(|c| {
                c.query(
                    "SELECT v.hash, v.embedding, v.norm FROM vectors v
                     WHERE ($1::text[] IS NULL OR v.hash = ANY($1))
                       AND NOT EXISTS (SELECT 1 FROM joint j WHERE j.model = $3 AND j.hash = v.hash)
                     LIMIT $2",
                    &[&hashes, &JOINT_BATCH, &model_id],
                )
            })?;
            if rows.is_empty() {
                return Ok(added);
            }
            let (hashes, projected) = self.project_rows(&rows, out_dim, project)?;
            let written = self.retry(|c| {
                let mut tx = c.transaction()?;
                let insert = tx.prepare(
                    "INSERT INTO joint(hash, model, embedding)
                     SELECT $1, $2, $3 WHERE $2 = (SELECT MAX(id) FROM models)
                       AND EXISTS (SELECT 1 FROM vectors WHERE hash = $1)
                     ON CONFLICT (model, hash) DO NOTHING",
                )?;
                let mut n = 0;
                for (hash, v) in hashes.iter().zip(&projected) {
                    n += tx.execute(&insert, &[hash, &model_id, v])?;
                }
                tx.commit()?;
                Ok(n)
            });
            let n = match written {
                Ok(n) => n,
                // A retrain with another width between the check and the insert.
                Err(_) if self.model_id()? != Some(model_id) => return Ok(added),
                Err(e) => return Err(e),
            };
            if n == 0 {
                // Another model is current now (or another process filled them).
                return Ok(added);
            }
            added += n as usize;
        }
    }

    /// Gives stored contents (all, or only `hashes`) their vector on a text
    /// side under projection `fingerprint` (hex), made by `project`, and
    /// makes sure its partial HNSW index exists. Rows of the side's other
    /// projections (an older model, another encoder) are dropped once this
    /// one is complete. Idempotent; returns rows added.
    pub fn sync_text(
        &self,
        side: &str,
        fingerprint: &str,
        out_dim: usize,
        hashes: Option<&[String]>,
        project: Project<'_>,
    ) -> Result<usize> {
        if !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err(format!("bad text-side fingerprint {fingerprint}")));
        }
        let mut added = 0;
        loop {
            let rows = self.retry(|c| {
                c.query(
                    "SELECT v.hash, v.embedding, v.norm FROM vectors v
                     WHERE ($1::text[] IS NULL OR v.hash = ANY($1))
                       AND NOT EXISTS (SELECT 1 FROM text_vectors t WHERE t.fingerprint = $3 AND t.hash = v.hash)
                     LIMIT $2",
                    &[&hashes, &JOINT_BATCH, &fingerprint],
                )
            })?;
            if rows.is_empty() {
                break;
            }
            let (found, projected) = self.project_rows(&rows, out_dim, project)?;
            let n = self.retry(|c| {
                let mut tx = c.transaction()?;
                let insert = tx.prepare(
                    "INSERT INTO text_vectors(side, fingerprint, hash, embedding)
                     SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM vectors WHERE hash = $3)
                     ON CONFLICT (fingerprint, hash) DO NOTHING",
                )?;
                let mut n = 0;
                for (hash, v) in found.iter().zip(&projected) {
                    n += tx.execute(&insert, &[&side, &fingerprint, hash, v])?;
                }
                tx.commit()?;
                Ok(n)
            })?;
            added += n as usize;
            if n == 0 {
                // Another process wrote them meanwhile.
                break;
            }
        }
        if hashes.is_none() {
            let index = text_index(fingerprint);
            self.retry(|c| {
                let mut tx = c.transaction()?;
                // One index builder at a time; the others find it there.
                tx.execute("SELECT pg_advisory_xact_lock(7355610)", &[])?;
                tx.batch_execute(&format!(
                    "CREATE INDEX IF NOT EXISTS {index} ON text_vectors
                     USING hnsw ((embedding::vector({out_dim})) vector_cosine_ops) WHERE fingerprint = '{fingerprint}'"
                ))?;
                let old: Vec<String> = tx
                    .query(
                        "SELECT DISTINCT fingerprint FROM text_vectors WHERE side = $1 AND fingerprint <> $2",
                        &[&side, &fingerprint],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for fp in &old {
                    if fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                        tx.batch_execute(&format!("DROP INDEX IF EXISTS {}", text_index(fp)))?;
                    }
                }
                tx.execute("DELETE FROM text_vectors WHERE side = $1 AND fingerprint <> $2", &[&side, &fingerprint])?;
                tx.commit()
            })?;
        }
        Ok(added)
    }

    /// The `k` images nearest to `query` on the text side of projection
    /// `fingerprint` (its HNSW index in the database).
    pub fn nearest_text(&self, fingerprint: &str, query: &[f32], k: usize) -> Result<Vec<(ImageRecord, f32)>> {
        if !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err(format!("bad text-side fingerprint {fingerprint}")));
        }
        let Some(q) = unit_vector(query) else { return Ok(Vec::new()) };
        let d = query.len();
        self.nearest_by(
            &format!(
                "SELECT v.id, t.hash, v.norm, t.d FROM (
                     SELECT hash, embedding::vector({d}) <=> $1 AS d FROM text_vectors
                     WHERE fingerprint = '{fingerprint}'
                     ORDER BY embedding::vector({d}) <=> $1 LIMIT $2) t
                 JOIN vectors v ON v.hash = t.hash"
            ),
            &[&q],
            k,
        )
    }

    /// How many contents have a joint embedding under the current model.
    pub fn joint_len(&self) -> Result<usize> {
        let n: i64 = self
            .retry(|c| c.query_one("SELECT COUNT(*) FROM joint WHERE model = (SELECT MAX(id) FROM models)", &[]))?
            .get(0);
        Ok(n as usize)
    }

    /// The `k` images nearest to `query` in model `model_id`'s joint space
    /// (its HNSW index in the database).
    pub fn nearest_joint(&self, model_id: i64, query: &[f32], k: usize) -> Result<Vec<(ImageRecord, f32)>> {
        let Some(q) = unit_vector(query) else { return Ok(Vec::new()) };
        let d = query.len();
        // The expression and the predicate match the model's partial index
        // (literals, so the planner can use it); vectors only adds id and norm.
        self.nearest_by(
            &format!(
                "SELECT v.id, j.hash, v.norm, j.d FROM (
                     SELECT hash, embedding::vector({d}) <=> $1 AS d FROM joint WHERE model = {model_id}
                     ORDER BY embedding::vector({d}) <=> $1 LIMIT $2) j
                 JOIN vectors v ON v.hash = j.hash"
            ),
            &[&q],
            k,
        )
    }

    /// The `k` images nearest to `query` with both sides multiplied by
    /// `weights` (one ImageNet class's row): an exact scan, as in the
    /// embedded store, since no index holds reweighted vectors.
    pub fn nearest_weighted(&self, query: &[f32], weights: &[f32], k: usize) -> Result<Vec<(ImageRecord, f32)>> {
        let qw: Vec<f32> = query.iter().zip(weights).map(|(q, w)| q * w).collect();
        let Some(qw) = unit_vector(&qw) else { return Ok(Vec::new()) };
        let w = Vector::from(weights.to_vec());
        self.nearest_by(
            "SELECT id, hash, norm, (embedding * $3) <=> $1 AS d FROM vectors ORDER BY (embedding * $3) <=> $1 LIMIT $2",
            &[&qw, &w],
            k,
        )
    }

    /// Runs a nearest query: `inner` selects `id, hash, norm, d` for `$1`
    /// (the query) and `$2` (the limit), plus `extra` from `$3` on; its
    /// hits are joined with their images, nearest first.
    fn nearest_by(
        &self,
        inner: &str,
        args: &[&(dyn postgres::types::ToSql + Sync)],
        k: usize,
    ) -> Result<Vec<(ImageRecord, f32)>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let ef = self.ef_search.max(k);
        let exact = if self.exact.load(std::sync::atomic::Ordering::Relaxed) {
            "SET LOCAL enable_indexscan = off;"
        } else {
            ""
        };
        let limit = k as i64;
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![args[0], &limit];
        params.extend_from_slice(&args[1..]);
        let sql = format!(
            "WITH nn AS ({inner})
             SELECT nn.d, i.key, i.path, i.hash, i.size, i.mtime, i.label, nn.id, nn.norm
             FROM nn JOIN images i ON i.hash = nn.hash ORDER BY nn.d, i.key"
        );
        // The HNSW index answers the inner query; the join only names them.
        let rows = self.retry(|c| {
            if ef == DEFAULT_EF_SEARCH && exact.is_empty() {
                return c.query(&sql, &params);
            }
            let mut tx = c.transaction()?;
            tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {ef}; {exact}"))?;
            let rows = tx.query(&sql, &params)?;
            tx.commit()?;
            Ok(rows)
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let d: f64 = r.get(0);
                // pgvector's cosine distance is 1 - cos.
                (record_at(r, 1), crate::vector::distance(1.0 - d as f32))
            })
            .take(k)
            .collect())
    }

    /// Adds an uploaded image with its bytes, in one transaction, so any
    /// replica can serve the original. Returns its key.
    pub fn add_upload(&self, image: &NewImage, bytes: &[u8]) -> Result<i64> {
        let fresh = image.unit_embedding(self.dim)?.map(|(u, n)| (n, Vector::from(u)));
        self.retry(|c| {
            let mut tx = c.transaction()?;
            if let Some((norm, v)) = &fresh {
                tx.execute(
                    "INSERT INTO vectors(hash, norm, embedding) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
                    &[&image.hash, norm, v],
                )?;
            }
            tx.execute(
                "INSERT INTO blobs(hash, bytes) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
                &[&image.hash, &bytes],
            )?;
            let key: i64 = tx
                .query_one(
                    "INSERT INTO images(path, hash, size, mtime, label) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (path) DO UPDATE SET label = excluded.label RETURNING key",
                    &[&image.path, &image.hash, &(image.size as i64), &image.mtime, &image.label],
                )?
                .get(0);
            tx.commit()?;
            Ok(key)
        })
    }

    /// The stored bytes of an uploaded image with this content.
    pub fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.retry(|c| c.query_opt("SELECT bytes FROM blobs WHERE hash = $1", &[&hash]))?.map(|r| r.get(0)))
    }
}

/// `v` at unit length as a pgvector value; `None` for a zero vector.
/// The partial HNSW index of one text-side projection.
fn text_index(fingerprint: &str) -> String {
    format!("text_hnsw_{}", &fingerprint[..fingerprint.len().min(16)])
}

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

const COLUMNS: &str = "SELECT i.key, i.path, i.hash, i.size, i.mtime, i.label, v.id, v.norm FROM images i JOIN vectors v ON v.hash = i.hash";

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
    }
}

impl ImageStore for PgStore {
    fn describe(&self) -> String {
        format!("PostgreSQL {}", self.name)
    }

    fn indexes_itself(&self) -> bool {
        true
    }

    fn set_exact(&self, exact: bool) {
        PgStore::set_exact(self, exact)
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

    fn recent(&self, before: Option<i64>, limit: usize) -> Result<Vec<ImageRecord>> {
        let (before, limit) = (before.unwrap_or(i64::MAX), limit.min(i64::MAX as usize) as i64);
        self.records(&format!("{COLUMNS} WHERE i.key < $1 ORDER BY i.key DESC LIMIT $2"), &[&before, &limit])
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
            let insert = tx.prepare(
                "INSERT INTO images(path, hash, size, mtime, label) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (path) DO UPDATE SET hash = excluded.hash, size = excluded.size,
                     mtime = excluded.mtime, label = excluded.label
                 RETURNING key",
            )?;
            // The contents these paths held before: a replaced one may be orphaned.
            let paths: Vec<&str> = images.iter().map(|i| i.path.as_str()).collect();
            let before: Vec<String> =
                tx.query("SELECT hash FROM images WHERE path = ANY($1)", &[&paths])?.iter().map(|r| r.get(0)).collect();
            let mut keys = Vec::with_capacity(images.len());
            for img in images {
                let row = tx.query_one(&insert, &[&img.path, &img.hash, &(img.size as i64), &img.mtime, &img.label])?;
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

    fn ping(&self) -> Result<()> {
        PgStore::ping(self)
    }

    fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<(ImageRecord, f32)>> {
        let Some(q) = unit_vector(query) else { return Ok(Vec::new()) };
        self.nearest_by(
            "SELECT id, hash, norm, embedding <=> $1 AS d FROM vectors ORDER BY embedding <=> $1 LIMIT $2",
            &[&q],
            k,
        )
    }

    fn as_postgres(&self) -> Option<&PgStore> {
        Some(self)
    }
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
