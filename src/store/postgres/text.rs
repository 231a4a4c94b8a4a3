//! What a database keeps besides images: trained models, each content's
//! vectors on the text sides (the trained model's in `joint`, the zero-shot
//! and fused sides' in `text_vectors`, each with a partial HNSW index), and
//! the bytes of uploads.

use pgvector::Vector;

use super::{record_at, unit_vector, PgStore, DEFAULT_EF_SEARCH, HALF, HNSW_BUILD_LIST};
use crate::store::{Filter, ImageRecord, NewImage, StoredModel};
use crate::{Error, Result};

/// Projects raw CNN embeddings (`[n, dim]`, row-major) into the joint space.
pub type Project<'a> = &'a dyn Fn(&[f32]) -> Result<Vec<f32>>;

/// Rows read and projected per round trip when filling joint embeddings.
const JOINT_BATCH: i64 = 1024;

impl PgStore {
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
            // One trainer at a time. Writing and indexing every content's
            // row may take longer than a search's statement timeout
            // (100k contents: the index alone took over a minute).
            tx.batch_execute("SET LOCAL statement_timeout = 0").map_err(pg)?;
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
                "CREATE INDEX joint_hnsw_{id} ON joint USING hnsw ((embedding::vector({out_dim})) vector_cosine_ops)
                 WITH (ef_construction = {HNSW_BUILD_LIST}) WHERE model = {id}"
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
    pub(super) fn project_rows(
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
        // Retrained meanwhile: the new model's rows are its trainer's to write.
        let current = || Ok(self.model_id()? == Some(model_id));
        self.fill_missing(
            "SELECT v.hash, v.embedding, v.norm FROM vectors v
             WHERE ($1::text[] IS NULL OR v.hash = ANY($1))
               AND NOT EXISTS (SELECT 1 FROM joint j WHERE j.model = $3 AND j.hash = v.hash)
             LIMIT $2",
            "INSERT INTO joint(hash, model, embedding)
             SELECT $1, $2, $3 WHERE $2 = (SELECT MAX(id) FROM models)
               AND EXISTS (SELECT 1 FROM vectors WHERE hash = $1)
             ON CONFLICT (model, hash) DO NOTHING",
            (&model_id, &[]),
            hashes,
            (out_dim, project),
            &current,
        )
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
        let added = self.fill_missing(
            "SELECT v.hash, v.embedding, v.norm FROM vectors v
             WHERE ($1::text[] IS NULL OR v.hash = ANY($1))
               AND NOT EXISTS (SELECT 1 FROM text_vectors t WHERE t.fingerprint = $3 AND t.hash = v.hash)
             LIMIT $2",
            "INSERT INTO text_vectors(side, fingerprint, hash, embedding)
             SELECT $4, $2, $1, $3 WHERE EXISTS (SELECT 1 FROM vectors WHERE hash = $1)
             ON CONFLICT (fingerprint, hash) DO NOTHING",
            (&fingerprint, &[&side]),
            hashes,
            (out_dim, project),
            &|| Ok(true),
        )?;
        if hashes.is_none() {
            let index = text_index(fingerprint);
            self.retry(|c| {
                let mut tx = c.transaction()?;
                // One index builder at a time; the others find it there
                // (however long the build, past a search's statement timeout).
                tx.batch_execute("SET LOCAL statement_timeout = 0")?;
                tx.execute("SELECT pg_advisory_xact_lock(7355610)", &[])?;
                tx.batch_execute(&format!(
                    "CREATE INDEX IF NOT EXISTS {index} ON text_vectors
                     USING hnsw ((embedding::vector({out_dim})) vector_cosine_ops)
                     WITH (ef_construction = {HNSW_BUILD_LIST}) WHERE fingerprint = '{fingerprint}'"
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

    /// Fills in the rows `missing` finds (`hash, embedding, norm` of
    /// contents without one; `$1` the hashes or NULL, `$2` a batch size,
    /// `$3` the key), a batch at a time: projected, then written by
    /// `insert` (`$1` hash, `$2` key, `$3` vector, then `extra`), one
    /// transaction a batch. Stops when nothing is missing, a batch writes
    /// nothing (another process wrote them), or `current` says the key is
    /// no longer the one to write. Returns rows added.
    fn fill_missing(
        &self,
        missing: &str,
        insert: &str,
        (key, extra): (&(dyn postgres::types::ToSql + Sync), &[&(dyn postgres::types::ToSql + Sync)]),
        hashes: Option<&[String]>,
        (out_dim, project): (usize, Project<'_>),
        current: &dyn Fn() -> Result<bool>,
    ) -> Result<usize> {
        let mut added = 0;
        loop {
            if !current()? {
                return Ok(added);
            }
            let rows = self.retry(|c| c.query(missing, &[&hashes, &JOINT_BATCH, key]))?;
            if rows.is_empty() {
                return Ok(added);
            }
            let (found, projected) = self.project_rows(&rows, out_dim, project)?;
            let written = self.retry(|c| {
                let mut tx = c.transaction()?;
                let statement = tx.prepare(insert)?;
                let mut n = 0;
                for (hash, v) in found.iter().zip(&projected) {
                    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![hash, key, v];
                    params.extend_from_slice(extra);
                    n += tx.execute(&statement, &params)?;
                }
                tx.commit()?;
                Ok(n)
            });
            let n = match written {
                Ok(n) => n,
                // A retrain with another width between the check and the insert.
                Err(_) if !current()? => return Ok(added),
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(added);
            }
            added += n as usize;
        }
    }

    /// The `k` images nearest to `query` on the text side of projection
    /// `fingerprint` (its HNSW index in the database).
    pub fn nearest_text(
        &self,
        fingerprint: &str,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(ImageRecord, f32)>> {
        if !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err(format!("bad text-side fingerprint {fingerprint}")));
        }
        let Some(q) = unit_vector(query) else { return Ok(Vec::new()) };
        let d = query.len();
        self.nearest_by(
            &format!(
                "SELECT v.id, t.hash, v.norm, t.d FROM (
                     SELECT hash, {{order}} AS d FROM text_vectors
                     WHERE fingerprint = '{fingerprint}' {{filter}}
                     ORDER BY {{order}} LIMIT {{limit}}) t
                 JOIN vectors v ON v.hash = t.hash"
            ),
            &format!("embedding::vector({d}) <=> $1"),
            &[&q],
            k,
            filter,
            Narrow {
                half: None,
                half_indexed: false,
                here: Some(Local {
                    space: format!("text {fingerprint}"),
                    query: q.as_slice(),
                    fetch: fetch_sql(&format!("text_vectors v ON v.fingerprint = '{fingerprint}' AND")),
                }),
            },
        )
    }

    /// How many contents have a vector under projection `fingerprint` (hex).
    pub fn text_len(&self, fingerprint: &str) -> Result<usize> {
        let n: i64 = self
            .retry(|c| c.query_one("SELECT COUNT(*) FROM text_vectors WHERE fingerprint = $1", &[&fingerprint]))?
            .get(0);
        Ok(n as usize)
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
    pub fn nearest_joint(
        &self,
        model_id: i64,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(ImageRecord, f32)>> {
        let Some(q) = unit_vector(query) else { return Ok(Vec::new()) };
        let d = query.len();
        // The expression and the predicate match the model's partial index
        // (literals, so the planner can use it); vectors only adds id and norm.
        self.nearest_by(
            &format!(
                "SELECT v.id, j.hash, v.norm, j.d FROM (
                     SELECT hash, {{order}} AS d FROM joint WHERE model = {model_id} {{filter}}
                     ORDER BY {{order}} LIMIT {{limit}}) j
                 JOIN vectors v ON v.hash = j.hash"
            ),
            &format!("embedding::vector({d}) <=> $1"),
            &[&q],
            k,
            filter,
            Narrow {
                half: None,
                half_indexed: false,
                here: Some(Local {
                    space: format!("joint {model_id}"),
                    query: q.as_slice(),
                    fetch: fetch_sql(&format!("joint v ON v.model = {model_id} AND")),
                }),
            },
        )
    }

    /// The `k` images nearest to `query` with both sides multiplied by
    /// `weights` (one ImageNet class's row): an exact scan, as in the
    /// embedded store, since no index holds reweighted vectors.
    pub fn nearest_weighted(
        &self,
        query: &[f32],
        weights: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(ImageRecord, f32)>> {
        let qw: Vec<f32> = query.iter().zip(weights).map(|(q, w)| q * w).collect();
        let Some(qw) = unit_vector(&qw) else { return Ok(Vec::new()) };
        let w = Vector::from(weights.to_vec());
        self.nearest_by(
            "SELECT id, hash, norm, {order} AS d FROM vectors WHERE TRUE {filter}
             ORDER BY {order} LIMIT {limit}",
            "(embedding * $2) <=> $1",
            &[&qw, &w],
            k,
            filter,
            Narrow {
                half: Some("(i.half * (SELECT $2::halfvec)) <=> (SELECT $1::halfvec)"),
                half_indexed: false,
                here: None,
            },
        )
    }

    /// Runs a nearest query: `inner` selects `id, hash, norm, d` for `$1`
    /// (the query) and `{limit}` (a literal: a statement is planned once
    /// per connection, and a generic plan for an unknown limit would sort
    /// every row), plus `extra` from `$2` on, with `{filter}` where the
    /// filter's condition on `hash` goes and `{order}` where `order`, the
    /// distance an HNSW index orders by, goes (in the select list and the
    /// `ORDER BY`, so it is computed once a row); its hits are joined with
    /// their images, nearest first. `narrow.half` is the
    /// same distance over the `images` row's half-precision embedding
    /// (`i.half`), when `inner` ranks image embeddings (`narrow`).
    ///
    /// The plan is picked here, not left to the planner, which guesses a
    /// filter's share (a camera substring: a third) and then walks the
    /// index or scores every passing row whatever the share. So the share
    /// is counted (kept a minute per filter):
    /// - a fifth or more pass: pgvector's iterative walk (every connection
    ///   walks iteratively, `relaxed_order`, so it needs no transaction of
    ///   its own: 3 round trips, 0.25 ms), with the usual candidate list.
    ///   Over 10k rows (`cargo bench --bench filters` with
    ///   IMGSEARCH_BENCH_PG) a 50 % filter takes 0.85-0.97 ms where scoring
    ///   every passing row took 17 ms. Twice the candidate list (and
    ///   `enable_sort` off, in a transaction) took 2.2-3.2 ms for recall
    ///   0.978 instead of 0.970 at 25 %, 0.968 instead of 0.956 at 50 %
    ///   following the content. A walk that ends short of `k` falls back to
    ///   the exact plan. The image side walks the images' own index
    ///   (`narrow.half_indexed`), each row it reaches checked in place:
    ///   a 50 % filter that follows the content, 10k rows, 0.92 ms (1.48x)
    ///   against 1.62 ms (2.13x) through `vectors`' index and a probe of
    ///   `images` per candidate. It takes `2 k` by half precision and
    ///   returns the best `k` in full: over 100k rows (`cargo bench --bench
    ///   pg`) recall@10 1.000 at 1.44 ms, where the best `k` by half
    ///   precision had 0.991-0.996 (1.000 and 1.50 ms through `vectors`).
    /// - fewer, in a process that keeps vectors (`narrow.here`, the
    ///   server): the database names the passing contents by id (an
    ///   index-only scan for a folder, dates or a label), this process ranks
    ///   them in its int8 copy (`cache`), and the database scores the best
    ///   `2 k` in full and finds their images that pass.
    ///   A text side's 10 % folder over 10k: 0.74 ms (1.3x) against 3.0 ms
    ///   in SQL; the image side's over 30k: 1.55 ms (1.4x) against 4.3 ms
    ///   (64-digit hashes, each query's filters in turn from a new one).
    /// - fewer, with `narrow.half`: every passing image scored on its own row's
    ///   half-precision embedding (no join, a 2.5 KB read: 1.3-1.8 us a
    ///   row), and the best `4 k` scored again in full precision, so the
    ///   distances returned are the unfiltered search's. A 10 % folder:
    ///   2.3-2.5 ms where the join to `vectors` took 4.0-4.2 ms.
    /// - fewer, without (a text side, a joint model): every passing row
    ///   scored (the order by `(order) + 0`, which no index serves), each
    ///   looked up by hash: about 1 us a row for a 384-d text side.
    ///
    /// A walk through a 10 % filter lost recall (0.74-0.90 at 4-5 ms).
    pub(super) fn nearest_by(
        &self,
        inner: &str,
        order: &str,
        args: &[&(dyn postgres::types::ToSql + Sync)],
        k: usize,
        filter: &Filter,
        narrow: Narrow<'_>,
    ) -> Result<Vec<(ImageRecord, f32)>> {
        /// From this share of images passing a filter on, the index is walked.
        const WALK_FROM: f64 = 0.2;
        if k == 0 {
            return Ok(Vec::new());
        }
        let ef = self.ef_search.max(k);
        // The contents a narrow filter's images hold, best first, when they
        // are scored here.
        let best: Vec<String>;
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = args.to_vec();
        let (conditions, values) = filter_sql(filter, params.len() + 1);
        params.extend(values.iter().map(|v| v.as_ref() as &(dyn postgres::types::ToSql + Sync)));
        let mut plan = match () {
            _ if self.exact.load(std::sync::atomic::Ordering::Relaxed) => Plan::Exact,
            _ if conditions.is_empty() => Plan::Walk,
            _ if self.filter_share(filter, WALK_FROM)? >= WALK_FROM => Plan::FilteredWalk,
            _ if narrow.here.is_some() && self.keep.load(std::sync::atomic::Ordering::Relaxed) => Plan::Here,
            _ => narrow.half.map_or(Plan::Exact, Plan::Half),
        };
        if let (Plan::Here, Some(local)) = (plan, &narrow.here) {
            // The copy ranks within int8 rounding: twice k covers it (recall
            // 1.000 at 10 of 1000 in the bench; 4 k took the database 0.1 ms more).
            match self.nearest_here(local, filter, 2 * k)? {
                Some(found) => {
                    best = found;
                    params.push(&best);
                }
                None => plan = narrow.half.map_or(Plan::Exact, Plan::Half),
            }
        }
        let inner_filter = match plan {
            _ if conditions.is_empty() => String::new(),
            Plan::Half(half) => format!(
                // A NULL half (none is left by the migration) ranks first.
                "AND hash IN (SELECT i.hash FROM images i WHERE {conditions}
                              ORDER BY COALESCE({half}, -1) LIMIT {})",
                4 * k
            ),
            // Every passing row scored: its row looked up by hash, one
            // probe each (as an array, which the planner cannot turn into
            // a hash join over the whole table). A text side's 10 % folder
            // at 10k: 1.3 ms where `IN` hashed all 10k rows in 3.1-4.4 ms.
            Plan::Exact => format!("AND hash = ANY(ARRAY(SELECT i.hash FROM images i WHERE {conditions}))"),
            Plan::Here => format!("AND hash = ANY(${})", params.len()),
            _ => format!("AND hash IN (SELECT i.hash FROM images i WHERE {conditions})"),
        };
        let outer_filter = match conditions.is_empty() {
            true => String::new(),
            false => format!("AND {conditions}"),
        };
        // For the best contents of the copy, their images that pass, one
        // probe by hash each (0.13 ms for 10 of them; joined to a subquery
        // for the best, the filter checked there, 0.45 ms; flattened, the
        // planner also scanned a folder's whole range of the paths' index).
        let from = match plan {
            Plan::Here => format!(
                "nn CROSS JOIN LATERAL (SELECT * FROM images i WHERE i.hash = nn.hash {outer_filter} OFFSET 0) i"
            ),
            _ => format!("nn JOIN images i ON i.hash = nn.hash {outer_filter}"),
        };
        let sql = |order: &str| {
            let inner =
                inner.replace("{filter}", &inner_filter).replace("{order}", order).replace("{limit}", &k.to_string());
            format!(
                "WITH nn AS ({inner})
                 SELECT nn.d, i.key, i.path, i.hash, i.size, i.mtime, i.label, nn.id, nn.norm,
                        i.taken, i.camera, i.width, i.height
                 FROM {from} ORDER BY nn.d, i.key"
            )
        };
        let run = |sql: &str, ef: usize| {
            self.retry(|c| {
                let statement = c.prepared(sql)?;
                if ef == DEFAULT_EF_SEARCH {
                    return c.query(&statement, &params);
                }
                let mut tx = c.transaction()?;
                tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {ef}"))?;
                let rows = tx.query(&statement, &params)?;
                tx.commit()?;
                Ok(rows)
            })
        };
        let exact_sql = || sql(&format!("({order}) + 0"));
        // A walk of the images' own index (`narrow.half_indexed`): the
        // nearest `2 k` images whose rows pass, then the distance in full
        // (`order`, over `vectors`), by which the best `k` are returned.
        let walk_sql = || match (narrow.half, narrow.half_indexed) {
            (Some(half), true) => {
                let passing = if conditions.is_empty() { "TRUE" } else { &conditions };
                format!(
                    "WITH nn AS (SELECT i.key, i.path, i.hash, i.size, i.mtime, i.label,
                                        i.taken, i.camera, i.width, i.height
                                 FROM images i WHERE {passing} ORDER BY {half} LIMIT {limit})
                     SELECT {order} AS d, nn.key, nn.path, nn.hash, nn.size, nn.mtime, nn.label, v.id, v.norm,
                            nn.taken, nn.camera, nn.width, nn.height
                     FROM nn JOIN vectors v ON v.hash = nn.hash ORDER BY d, nn.key",
                    limit = 2 * k
                )
            }
            _ => sql(order),
        };
        let rows = match plan {
            Plan::Exact | Plan::Half(_) | Plan::Here => run(&exact_sql(), DEFAULT_EF_SEARCH)?,
            Plan::Walk => run(&walk_sql(), ef)?,
            Plan::FilteredWalk => {
                let rows = run(&walk_sql(), ef)?;
                match rows.len() < k {
                    true => run(&exact_sql(), DEFAULT_EF_SEARCH)?,
                    false => rows,
                }
            }
        };
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
        let (m, size) = (&image.meta, image.size as i64);
        let (w, h) = (m.width.map(|w| w as i32), m.height.map(|h| h as i32));
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
                    &format!(
                        "INSERT INTO images(path, hash, size, mtime, label, taken, camera, width, height, half)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {HALF})
                         ON CONFLICT (path) DO UPDATE SET label = excluded.label RETURNING key"
                    ),
                    &[&image.path, &image.hash, &size, &image.mtime, &image.label, &m.taken, &m.camera, &w, &h],
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

/// How `nearest_by` answers a query.
#[derive(Clone, Copy)]
enum Plan<'a> {
    /// Every passing row scored.
    Exact,
    /// The passing contents ranked in this process's copy of their
    /// vectors (`cache`), the best scored again in full.
    Here,
    /// The passing rows ranked by this distance on their `images` row's
    /// half-precision embedding, the best scored again in full.
    Half(&'a str),
    /// The HNSW index walked, unfiltered.
    Walk,
    /// The HNSW index walked until enough rows pass (pgvector's iterative scan).
    FilteredWalk,
}

/// The partial HNSW index of one text-side projection.
fn text_index(fingerprint: &str) -> String {
    format!("text_hnsw_{}", &fingerprint[..fingerprint.len().min(16)])
}

/// A filter as SQL conditions on `images i`, its parameters numbered from
/// `first`; empty for no filter.
impl PgStore {
    /// The share of images `filter` lets through, counted at most once a
    /// minute per filter, and only up to `enough` of the images (the count
    /// stops there; the images' number is the planner's, exact only while
    /// the table was never analyzed). Counting every image took 3-5 ms
    /// per 30k images, which a one-shot command pays on each filtered
    /// search.
    fn filter_share(&self, filter: &Filter, enough: f64) -> Result<f64> {
        const FRESH: std::time::Duration = std::time::Duration::from_secs(60);
        {
            let shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, share, _)) = shares.iter().find(|(f, _, at)| f == filter && at.elapsed() < FRESH) {
                return Ok(*share);
            }
        }
        let (conditions, values) = filter_sql(filter, 1);
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            values.iter().map(|v| v.as_ref() as &(dyn postgres::types::ToSql + Sync)).collect();
        let sql = format!(
            "WITH n AS (SELECT CASE WHEN reltuples >= 0 THEN reltuples::bigint ELSE (SELECT count(*) FROM images) END
                        AS total FROM pg_class WHERE oid = 'images'::regclass)
             SELECT (SELECT count(*) FROM (SELECT FROM images i WHERE {conditions}
                                           LIMIT (SELECT ceil(total * {enough}) + 1 FROM n)) p),
                    (SELECT total FROM n)"
        );
        let row = self.retry(|c| c.query_one(&sql, &params))?;
        let (passing, all): (i64, i64) = (row.get(0), row.get(1));
        let share = passing as f64 / all.max(1) as f64;
        let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        shares.retain(|(f, _, at)| f != filter && at.elapsed() < FRESH);
        shares.truncate(15);
        shares.push((filter.clone(), share, std::time::Instant::now()));
        Ok(share)
    }
}

/// How a narrow filter's images may be ranked before the best are scored
/// in full, other than scoring each in SQL.
pub(super) struct Narrow<'a> {
    /// The search's distance over the `images` row's half-precision copy.
    pub half: Option<&'a str>,
    /// Whether `half` is what the images' own HNSW index orders by
    /// (`images_half_hnsw`): then the index walks go there, and a filter
    /// is checked on each row the walk reaches.
    pub half_indexed: bool,
    /// The search's space in this process's copy, when it keeps one.
    pub here: Option<Local<'a>>,
}

/// A search's space in this process's own copy of the vectors (`cache`).
pub(super) struct Local<'a> {
    /// The copy's name for the space.
    pub space: String,
    /// The query, at unit length.
    pub query: &'a [f32],
    /// Selects each content's id, hash and vector in the space (NULL when
    /// it has none) for images `i`, up to `WHERE` ([`fetch_sql`]).
    pub fetch: String,
}

/// [`Local::fetch`] for a space's table joined as `v` `ON` `join` (which
/// ends in `AND`, or is the table alone with `ON`) its hash.
pub(super) fn fetch_sql(join: &str) -> String {
    format!("SELECT i.content, i.hash, v.embedding FROM images i LEFT JOIN {join} v.hash = i.hash WHERE")
}

impl PgStore {
    /// The hashes of the `m` contents nearest to `local.query` among those
    /// of the images `filter` lets through, scored in this process's copy
    /// of their vectors; the database names the passing contents and
    /// sends the vectors the copy lacks. `None` when the copy could not
    /// hold them all (past its capacity), or an image went meanwhile.
    fn nearest_here(&self, local: &Local<'_>, filter: &Filter, m: usize) -> Result<Option<Vec<String>>> {
        let (conditions, values) = filter_sql(filter, 1);
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            values.iter().map(|v| v.as_ref() as &(dyn postgres::types::ToSql + Sync)).collect();
        // As an array in one row (a row each cost more to decode than the
        // scan), each content by its 64-bit id (see `cache`): 3000 of 30k
        // in 0.56 ms, where their keys too took 1.0 ms and their 64-digit
        // hashes with the keys 1.9 ms.
        let sql = format!("SELECT COALESCE(array_agg(i.content), '{{}}') FROM images i WHERE {conditions}");
        let row = self.retry(|c| {
            let statement = c.prepared(&sql)?;
            c.query_one(&statement, &params)
        })?;
        let ids: Vec<i64> = row.get(0);
        match self.cache.nearest(&local.space, local.query, &ids, m) {
            Ok(best) => return Ok(Some(best)),
            Err(missing) => {
                // Asked through the filter again: a content whose images
                // went meanwhile is not taken for one the space lacks.
                let fetch = format!("{} {conditions} AND i.content = ANY(${})", local.fetch, values.len() + 1);
                for chunk in missing.chunks(1024) {
                    let mut asked = params.clone();
                    asked.push(&chunk);
                    let got = self.retry(|c| {
                        let statement = c.prepared(&fetch)?;
                        c.query(&statement, &asked)
                    })?;
                    let vectors = got
                        .iter()
                        .map(|r| (r.get(0), r.get(1), r.get::<_, Option<Vector>>(2).map(|v| v.to_vec())))
                        .collect();
                    self.cache.insert(&local.space, local.query.len(), vectors);
                }
            }
        }
        // Only a copy dropped meanwhile (past its capacity), or a content
        // whose images went, lacks any now.
        Ok(self.cache.nearest(&local.space, local.query, &ids, m).ok())
    }
}

pub(super) fn filter_sql(filter: &Filter, first: usize) -> (String, Vec<Box<dyn postgres::types::ToSql + Sync>>) {
    let mut conditions = Vec::new();
    let mut values: Vec<Box<dyn postgres::types::ToSql + Sync>> = Vec::new();
    let mut next = |value: Box<dyn postgres::types::ToSql + Sync>| {
        values.push(value);
        first + values.len() - 1
    };
    if let Some(under) = &filter.under {
        // The folder itself, or a path in the byte range of "under/": all
        // the paths starting with it, in "C" order, which an index serves
        // (`images_path_contents`; a scan with `left()` cost 1.2 ms per 10k
        // rows), every comparison on its expression ("C" equality is byte
        // equality, as the default's is), so that a scan for the passing
        // images and contents reads that index alone.
        let under = under.trim_end_matches('/');
        let at = next(Box::new(under.to_owned()));
        let (from, to) = (next(Box::new(format!("{under}/"))), next(Box::new(format!("{under}0"))));
        conditions.push(format!(
            "(i.path COLLATE \"C\" >= ${at} AND i.path COLLATE \"C\" < ${to} \
             AND (i.path COLLATE \"C\" = ${at} OR i.path COLLATE \"C\" >= ${from}))"
        ));
    }
    if let Some(label) = &filter.label {
        conditions.push(format!("i.label = ${}", next(Box::new(label.clone()))));
    }
    if let Some(after) = filter.after {
        conditions.push(format!("i.taken >= ${}", next(Box::new(after))));
    }
    if let Some(before) = filter.before {
        conditions.push(format!("i.taken < ${}", next(Box::new(before))));
    }
    if let Some(camera) = &filter.camera {
        conditions.push(format!("strpos(lower(i.camera), lower(${})) > 0", next(Box::new(camera.clone()))));
    }
    (conditions.join(" AND "), values)
}
