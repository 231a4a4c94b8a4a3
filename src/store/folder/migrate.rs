//! Moving a store written before centred embeddings
//! ([`crate::backbone::centre`]) to them, without re-embedding anything:
//! every stored row is its unit vector times its norm, so the centred
//! embedding is that minus the backbone's centre.
//!
//! Crash-safe in three steps under the write lock: the new rows go into
//! `vectors.f32.centred` (synced); one SQLite transaction records the new
//! norms, the batches' checksums and `embedding = 2`; the file replaces
//! `vectors.f32` by rename. An open that finds the staged file finishes the
//! rename when the transaction committed and deletes it when it did not.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use super::{db_err, Store, WriteLock, VECTORS_HEADER};
use crate::backbone::EMBEDDING_VERSION;
use crate::index::HnswIndex;
use crate::{Error, Result};

const SET_VERSION: &str = "INSERT OR REPLACE INTO settings VALUES ('embedding', ?1)";

impl Store {
    fn staged_vectors(&self) -> PathBuf {
        self.dir.join("vectors.f32.centred")
    }

    /// The embedding version the store records (1 when it records none).
    pub(super) fn embedding_version(&self) -> Result<u32> {
        let value: Option<String> = self
            .conn()
            .query_row("SELECT value FROM settings WHERE name = 'embedding'", [], |r| r.get(0))
            .optional()
            .map_err(|e| db_err(&self.dir, e))?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(1))
    }

    /// Brings an older store's vectors to [`EMBEDDING_VERSION`] (a writer's open).
    pub(super) fn centre_old_vectors(&mut self, backbone: &str) -> Result<()> {
        let current = self.embedding_version()? >= EMBEDDING_VERSION;
        if current && !self.staged_vectors().exists() {
            return Ok(());
        }
        let _lock = WriteLock::acquire(&self.dir)?;
        self.catch_up(true)?;
        let staged = self.staged_vectors();
        if self.embedding_version()? >= EMBEDDING_VERSION {
            // A migration that committed but did not get to its rename.
            if staged.exists() {
                self.replace_vectors(&staged)?;
            }
            return Ok(());
        }
        let _ = std::fs::remove_file(&staged);
        let dim = self.dim;
        if self.rows == 0 {
            return self.record_embedding_version();
        }
        let backbone = crate::backbone::centre_for_rows(backbone, dim)
            .map_err(|reason| Error::Store { path: self.dir.clone(), reason })?;
        tracing::info!(
            "{}: moving {} stored vectors to centred embeddings (once; nothing is embedded again)",
            self.dir.display(),
            self.rows
        );
        let norms: HashMap<u64, f32> = self.row_norms(0)?.into_iter().collect();
        // Each batch's checksum is made again over its moved rows, as they are written.
        let batches: Vec<(u64, u64)> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare("SELECT first_row, rows FROM vector_batches ORDER BY first_row")
                .map_err(|e| db_err(&self.dir, e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))
                .map_err(|e| db_err(&self.dir, e))?;
            rows.collect::<std::result::Result<_, _>>().map_err(|e| db_err(&self.dir, e))?
        };
        let mut sums: Vec<(u64, String)> = Vec::with_capacity(batches.len());
        let mut batch = batches.iter().peekable();
        let mut hasher: Option<(u64, u64, sha2::Sha256)> = None;
        let mut new_norms = Vec::with_capacity(norms.len());
        let io = |e| Error::io(&staged, e);
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&staged).map_err(io)?);
        out.write_all(&self.mmap.as_ref().expect("vectors are mapped on open")[..VECTORS_HEADER]).map_err(io)?;
        let mut row_bytes = Vec::with_capacity(dim * 4);
        for row in 0..self.rows {
            use sha2::Digest;
            let unit = &self.vectors()[row as usize * dim..(row as usize + 1) * dim];
            // A row no image uses any more keeps its old value; nothing reads it.
            let moved = match norms.get(&row) {
                Some(&norm) => {
                    let (v, norm) = crate::backbone::recentre(backbone, unit, norm);
                    new_norms.push((row, norm));
                    v
                }
                None => unit.to_vec(),
            };
            row_bytes.clear();
            moved.iter().for_each(|v| row_bytes.extend_from_slice(&v.to_le_bytes()));
            out.write_all(&row_bytes).map_err(io)?;
            if hasher.is_none() && batch.peek().is_some_and(|&&(first, _)| first == row) {
                let &(first, rows) = batch.next().expect("peeked");
                hasher = Some((first, first + rows, sha2::Sha256::new()));
            }
            if let Some((first, end, h)) = hasher.as_mut() {
                h.update(&row_bytes);
                if row + 1 == *end {
                    sums.push((*first, format!("{:x}", std::mem::take(h).finalize())));
                    hasher = None;
                }
            }
        }
        out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        let dir = &self.dir;
        let tx = conn.transaction().map_err(|e| db_err(dir, e))?;
        {
            let mut update = tx.prepare("UPDATE images SET norm = ?2 WHERE row = ?1").map_err(|e| db_err(dir, e))?;
            for (row, norm) in &new_norms {
                update.execute(params![*row as i64, *norm as f64]).map_err(|e| db_err(dir, e))?;
            }
            for (first, sha) in &sums {
                tx.execute("UPDATE vector_batches SET sha256 = ?2 WHERE first_row = ?1", params![*first as i64, sha])
                    .map_err(|e| db_err(dir, e))?;
            }
            tx.execute(SET_VERSION, [EMBEDDING_VERSION.to_string()]).map_err(|e| db_err(dir, e))?;
        }
        tx.commit().map_err(|e| db_err(dir, e))?;
        *self.records.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.replace_vectors(&staged)?;
        Ok(())
    }

    /// Records [`EMBEDDING_VERSION`] (a store with no rows has nothing to move).
    fn record_embedding_version(&self) -> Result<()> {
        self.conn().execute(SET_VERSION, [EMBEDDING_VERSION.to_string()]).map_err(|e| db_err(&self.dir, e))?;
        Ok(())
    }

    /// The staged vector file becomes `vectors.f32`; the graph built on the
    /// old rows goes (the next `index` builds it again).
    fn replace_vectors(&mut self, staged: &std::path::Path) -> Result<()> {
        let path = self.vectors_path();
        std::fs::rename(staged, &path).map_err(|e| Error::io(&path, e))?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        HnswIndex::remove(&self.dir)?;
        *self.hnsw.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.open_vectors(true)
    }
}
