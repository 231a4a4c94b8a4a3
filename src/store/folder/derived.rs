//! What a folder store derives from its vectors and keeps beside them:
//! the HNSW graph, each text side's vectors, and the checks `verify` runs.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{db_err, Store, VerifyReport, VECTORS_HEADER};
use crate::index::HnswIndex;
use crate::store::{Checked, TextSide, TextVectors};
use crate::store::{Filter, ImageRecord};
use crate::Result;

/// Every record, with the generation it was read at (this handle's writes, SQLite's `data_version`).
pub(super) type CachedRecords = (Generation, Arc<Vec<ImageRecord>>);
/// This handle's writes and SQLite's `data_version`: what changes when any process writes.
type Generation = (u64, i64);
/// A recent filter's rows, with the generation they were computed at.
pub(super) type FilteredRows = (Generation, Filter, Arc<Vec<usize>>);

impl Store {
    /// Checks every vector row against the checksum recorded when its batch was written.
    pub fn verify_vectors(&self) -> Result<VerifyReport> {
        use sha2::Digest;
        let batches: Vec<(u64, u64, String)> = {
            let conn = self.conn();
            // A store from before checksums were kept (opened read-only, so not migrated).
            let kept: bool = conn
                .query_row("SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'vector_batches'", [], |r| r.get(0))
                .map_err(|e| db_err(&self.dir, e))?;
            if !kept {
                return Ok(VerifyReport { checked: 0, unchecked: self.rows, damaged: Vec::new() });
            }
            let mut stmt = conn
                .prepare("SELECT first_row, rows, sha256 FROM vector_batches WHERE first_row < ?1 ORDER BY first_row")
                .map_err(|e| db_err(&self.dir, e))?;
            let rows = stmt
                .query_map([self.rows as i64], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, String>(2)?))
                })
                .map_err(|e| db_err(&self.dir, e))?;
            rows.collect::<std::result::Result<_, _>>().map_err(|e| db_err(&self.dir, e))?
        };
        let mmap = self.mmap.as_ref().expect("vectors are mapped on open");
        let row_bytes = self.dim as u64 * 4;
        let (mut checked, mut damaged) = (0, Vec::new());
        for (first, rows, sha) in batches {
            let start = (VECTORS_HEADER as u64 + first * row_bytes) as usize;
            let end = start + (rows * row_bytes) as usize;
            if end > mmap.len() || format!("{:x}", sha2::Sha256::digest(&mmap[start..end])) != sha {
                damaged.push((first, rows));
            }
            checked += rows;
        }
        Ok(VerifyReport { checked, unchecked: self.rows - checked.min(self.rows), damaged })
    }

    /// The store's HNSW graph kept in step with its rows, the one place
    /// this upkeep is written (`index`, `train`, `eval` and `serve` call it):
    /// `current` (a graph already in memory) or the saved one, extended
    /// with the rows added since; built the first time the store reaches
    /// [`crate::index::hnsw_min_rows`]; saved under the write lock when it
    /// changed. A damaged saved graph is rebuilt (derived data). `None`
    /// below the threshold.
    pub fn updated_hnsw(&self, current: Option<crate::index::HnswIndex>) -> Result<Option<crate::index::HnswIndex>> {
        use crate::index::{hnsw_min_rows, HnswIndex, HnswParams};
        let rows = self.vectors().len() / self.dim;
        if rows < hnsw_min_rows() {
            return Ok(None);
        }
        let saved = match current {
            Some(index) => Some(index),
            None if HnswIndex::exists(&self.dir) => match HnswIndex::load(&self.dir, HnswParams::default()) {
                Ok(index) => Some(index),
                Err(e) => {
                    tracing::warn!("{e}: rebuilding it");
                    None
                }
            },
            None => None,
        };
        // A graph whose rows were linked in row order is built again, once.
        let saved = saved.filter(|index| {
            if !index.links_shuffled() {
                tracing::info!(
                    "{}: building the HNSW graph again (once): it linked its rows in the order they were stored, \
                     which loses recall when a folder's photos look alike",
                    self.dir.display()
                );
            }
            index.links_shuffled()
        });
        let index = match saved {
            Some(index) if index.len() == rows => return Ok(Some(index)),
            Some(mut index) if index.len() < rows => {
                let covered = index.len();
                index.insert_rows(self.vectors(), self.dim, covered);
                index
            }
            _ => HnswIndex::build(self.vectors(), self.dim, HnswParams::default()),
        };
        if !self.read_only {
            let _lock = self.write_lock()?;
            index.save(&self.dir)?;
        }
        Ok(Some(index))
    }

    pub(super) fn is_exact(&self) -> bool {
        self.exact.load(Ordering::Relaxed)
    }

    /// Looks for the saved HNSW graph once (a reader never builds one):
    /// damage is a note, and searches scan exactly meanwhile.
    pub(super) fn load_hnsw(&self) {
        if self.hnsw.read().unwrap_or_else(|e| e.into_inner()).is_some() || self.is_exact() {
            return;
        }
        let mut graph = self.hnsw.write().unwrap_or_else(|e| e.into_inner());
        if graph.is_none() {
            *graph = Some(match HnswIndex::exists(&self.dir) {
                true => match HnswIndex::load(&self.dir, crate::index::HnswParams::default()) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        eprintln!("note: {e}; searching exactly meanwhile");
                        None
                    }
                },
                false => None,
            });
        }
    }

    /// The rows of the images `filter` lets through, sorted; the last few
    /// filters' rows are kept until the next write (paging, new queries
    /// under one filter, and a page switching between a few filters reuse
    /// them; matching 30k records takes about a millisecond).
    pub(super) fn rows_matching(&self, filter: &Filter) -> Result<Arc<Vec<usize>>> {
        const KEPT: usize = 8;
        let (generation, records) = self.cached_records()?;
        let mut recent = self.filtered.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|(g, _, _)| *g == generation);
        if let Some(at) = recent.iter().position(|(_, f, _)| f == filter) {
            let hit = recent.remove(at);
            let rows = hit.2.clone();
            recent.push(hit);
            return Ok(rows);
        }
        let mut rows: Vec<usize> = records.iter().filter(|r| filter.matches(r)).map(|r| r.row as usize).collect();
        rows.sort_unstable();
        rows.dedup();
        let rows = Arc::new(rows);
        if recent.len() >= KEPT {
            recent.remove(0);
        }
        recent.push((generation, filter.clone(), rows.clone()));
        Ok(rows)
    }

    /// Every record, read again only after a write (this handle's, or
    /// another process's: SQLite's `data_version`).
    pub(super) fn cached_records(&self) -> Result<CachedRecords> {
        let data_version: i64 =
            self.conn().query_row("PRAGMA data_version", [], |r| r.get(0)).map_err(|e| db_err(&self.dir, e))?;
        let generation = (self.writes.load(Ordering::Relaxed), data_version);
        let mut cache = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, records)) = &*cache {
            if *g == generation {
                return Ok((generation, records.clone()));
            }
        }
        let records = Arc::new(self.all()?);
        *cache = Some((generation, records.clone()));
        Ok((generation, records))
    }

    /// Where `side`'s vectors are: one file per side, so switching sides
    /// recomputes nothing (the trained side's is `vectors.f32`).
    pub fn text_vectors_path(&self, side: &str) -> PathBuf {
        let file = match side {
            "trained" => "vectors.f32".to_owned(),
            other => format!("{other}.f32"),
        };
        self.dir.join("joint").join(file)
    }

    /// `side`'s vectors, made current first (new rows projected; all of
    /// them when the projection changed).
    pub(super) fn text_vectors(&self, side: &TextSide<'_>) -> Result<Arc<TextVectors>> {
        let fingerprint = side.projection.fingerprint();
        if let Some(v) = self.text.read().unwrap_or_else(|e| e.into_inner()).get(side.name) {
            if v.fingerprint() == fingerprint && v.len() == self.rows as usize {
                return Ok(v.clone());
            }
        }
        let vectors = Arc::new(TextVectors::update(self, side.projection, &self.text_vectors_path(side.name))?);
        self.text.write().unwrap_or_else(|e| e.into_inner()).insert(side.name, vectors.clone());
        Ok(vectors)
    }

    /// Rows of `side` already made current in this handle.
    pub(super) fn synced_text_len(&self, side: &TextSide<'_>) -> usize {
        let text = self.text.read().unwrap_or_else(|e| e.into_inner());
        text.get(side.name).filter(|v| v.fingerprint() == side.projection.fingerprint()).map_or(0, |v| v.len())
    }

    /// Everything [`ImageStore::verify`] checks in a folder: the vector
    /// rows' checksums, the HNSW graph's, the model's, and each text
    /// side's vectors against a fresh projection.
    pub(super) fn check(&self, sides: &[TextSide<'_>]) -> Result<Checked> {
        let mut out = Checked::default();
        let VerifyReport { checked, unchecked, damaged } = self.verify_vectors()?;
        for (first, rows) in &damaged {
            out.damaged.push(format!(
                "{}: rows {first}..{} do not match their checksum",
                self.vectors_path().display(),
                first + rows
            ));
        }
        out.sound.push(format!(
            "vectors: {checked} rows checked, {} damaged, {unchecked} written before checksums (not checked)",
            damaged.len()
        ));
        if HnswIndex::exists(&self.dir) {
            match HnswIndex::load(&self.dir, Default::default()) {
                Ok(h) => out.sound.push(format!("HNSW graph: {} vectors, checksums match", h.len())),
                Err(e) => out.damaged.push(e.to_string()),
            }
        }
        match super::model::load(&self.dir) {
            Ok(Some(_)) => out.sound.push("joint model: checksum matches".into()),
            Ok(None) => {}
            Err(e) => out.damaged.push(e.to_string()),
        }
        for side in sides {
            let path = self.text_vectors_path(side.name);
            match TextVectors::damaged_rows(self, side.projection, &path)? {
                None => {}
                Some(rows) if rows.is_empty() => {
                    out.sound.push(format!("{} text vectors: {} rows recomputed, all match", side.name, self.rows()))
                }
                Some(rows) => out.damaged.push(format!(
                    "{}: {} rows differ from a fresh projection (first: row {}); delete the file and it is recomputed",
                    path.display(),
                    rows.len(),
                    rows[0]
                )),
            }
        }
        Ok(out)
    }
}
