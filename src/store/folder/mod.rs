//! The embedded store: one data directory with no server to start.
//!
//! - `meta.sqlite` (SQLite, WAL): one row per image — stable key, path,
//!   content hash, size, mtime, label, the vector row it uses and the
//!   embedding's norm — and the store's settings (backbone, dimension, and
//!   how many vector rows are committed).
//! - `vectors.f32`: a 64-byte header, then unit-length embeddings, one row
//!   each, appended and memory-mapped for search (nothing rebuilt at start).
//! - Derived from the vectors and kept beside them (`derived`): the HNSW
//!   graph (`graph-i8.*`), each text side's vectors (`joint/<side>.f32`,
//!   `text_vectors`), and the trained model (`joint/model.*`, `model`).
//!
//! A batch is written in two steps: its vectors are appended and synced,
//! then one SQLite transaction records the images and the new committed row
//! count. A crash between the two leaves rows past the committed count; they
//! are cut off at the next open. So a completed batch is never lost and a
//! half-written one is never seen. Images with identical content share a row.
//!
//! One writer at a time, any number of readers: every write takes an
//! exclusive lock on `write.lock` (flock; a second writer waits, saying so),
//! then re-reads the committed row count, so rows are assigned from what is
//! committed, never from a stale view. Readers take no lock; a long-lived
//! reader (`serve`) asks [`ImageStore::is_stale`] and [`ImageStore::refresh`]es.

mod derived;
use derived::{CachedRecords, FilteredRows};
mod lock;
mod migrate;
mod model;
mod search;
mod text_vectors;

pub use lock::WriteLock;
pub use text_vectors::TextVectors;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use memmap2::Mmap;
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    Checked, Cursor, Filter, ImageRecord, ImageStore, NewImage, NewModel, NewVector, Projection, SavedModel, Sort,
    StoreQuery, StoredModel, TextSide,
};
use crate::index::HnswIndex;
use crate::{Error, Result};

const VECTORS_MAGIC: &[u8; 8] = b"IMGSVEC1";
const VECTORS_HEADER: usize = 64;

/// The `SELECT` of an image record.
const COLUMNS: &str = "SELECT key, path, hash, size, mtime, label, row, norm, taken, camera, width, height FROM images";
/// The same on a store made before photo facts were kept.
const COLUMNS_BEFORE_META: &str =
    "SELECT key, path, hash, size, mtime, label, row, norm, NULL, NULL, NULL, NULL FROM images";

/// The embedded store.
pub struct Store {
    dir: PathBuf,
    /// Behind a mutex so the store is `Sync`: searches share it (the
    /// vectors are a memory map), writes take `&mut self`.
    conn: std::sync::Mutex<Connection>,
    dim: usize,
    rows: u64,
    mmap: Option<Mmap>,
    /// Opened by [`Store::open_read_only`]: nothing is created, cut or written.
    read_only: bool,
    /// The `SELECT` of a record ([`COLUMNS`], or with empty photo facts on
    /// a store made before them, opened read-only).
    columns: &'static str,
    /// The HNSW graph over the vectors: `None` until first looked for.
    hnsw: RwLock<Option<Option<HnswIndex>>>,
    /// Searches scan every vector ([`ImageStore::set_exact`]).
    exact: AtomicBool,
    /// Each text side's image vectors, by side name, once made current.
    text: RwLock<HashMap<&'static str, Arc<TextVectors>>>,
    /// Every record, for filters, with the [`Store::generation`] it was read at.
    records: std::sync::Mutex<Option<CachedRecords>>,
    /// The last few filters' rows, with the generation they were computed at.
    filtered: std::sync::Mutex<Vec<FilteredRows>>,
    /// Bumped by every write through this handle.
    writes: std::sync::atomic::AtomicU64,
}

/// What [`Store::verify_vectors`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Rows checked against their batch's checksum.
    pub checked: u64,
    /// Rows written before checksums were kept (not checked).
    pub unchecked: u64,
    /// Damaged batches: (first row, rows).
    pub damaged: Vec<(u64, u64)>,
}

/// A path in an SQLite `file:` URI (`%`, `?` and `#` escaped).
fn uri_escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn db_err(dir: &Path, e: rusqlite::Error) -> Error {
    Error::Store { path: dir.join("meta.sqlite"), reason: e.to_string() }
}

/// What an SQLite failure means for the person: a read-only store or a full
/// disk is not damage, and says what to do instead.
fn sqlite_trouble(e: &rusqlite::Error) -> Option<&'static str> {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code()? {
        ErrorCode::ReadOnly => {
            Some("the store is read-only: imgsearch needs write access to its folder (or pass --db <a copy>)")
        }
        ErrorCode::DiskFull => {
            Some("the disk is full: free some space and run the command again; nothing stored was lost")
        }
        ErrorCode::CannotOpen | ErrorCode::PermissionDenied => {
            Some("cannot open the store: check the folder's permissions")
        }
        _ => None,
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` for embeddings of `backbone`
    /// with `dim` dimensions. Refuses a store built with another backbone and
    /// detects corruption (SQLite's quick_check, vector file size and header).
    pub fn open(dir: &Path, backbone: &str, dim: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let conn = Connection::open(dir.join("meta.sqlite")).map_err(|e| db_err(dir, e))?;
        Self::open_conn(dir, conn, backbone, dim, false)
    }

    /// Opens an existing store for reading only (search, tag, status):
    /// nothing is created, migrated or cut, so a reader never changes a store
    /// and works on one it may not write (a read-only mount, a backup).
    pub fn open_read_only(dir: &Path, backbone: &str, dim: usize) -> Result<Self> {
        use rusqlite::OpenFlags;
        let meta = dir.join("meta.sqlite");
        if !meta.is_file() {
            return Err(Error::Store {
                path: dir.to_path_buf(),
                reason: "no index here: run `imgsearch index <folder>` first (or pass --db)".into(),
            });
        }
        let conn =
            Connection::open_with_flags(&meta, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| db_err(dir, e))?;
        // A WAL database needs its shared-memory file; where that cannot be
        // made (a read-only folder), read it as immutable.
        let conn = match conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0)) {
            Ok(_) => conn,
            Err(_) => {
                let uri = format!("file:{}?immutable=1", uri_escape(&meta));
                Connection::open_with_flags(
                    uri,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(|e| db_err(dir, e))?
            }
        };
        Self::open_conn(dir, conn, backbone, dim, true)
    }

    fn open_conn(dir: &Path, conn: Connection, backbone: &str, dim: usize, read_only: bool) -> Result<Self> {
        let corrupt = |reason: String| Error::Store {
            path: dir.join("meta.sqlite"),
            reason: format!("{reason}; the store is damaged: move it aside and re-run `imgsearch index`"),
        };
        let trouble = |e: rusqlite::Error| match sqlite_trouble(&e) {
            Some(what) => Error::Store { path: dir.join("meta.sqlite"), reason: format!("{what} ({e})") },
            None => corrupt(e.to_string()),
        };
        // Vector rows already on disk: metadata that does not account for
        // them is damage, never a reason to cut them off.
        let vector_bytes = std::fs::metadata(dir.join("vectors.f32")).map(|m| m.len()).unwrap_or(0);
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(trouble)?;
        if check != "ok" {
            return Err(corrupt(format!("SQLite integrity check: {check}")));
        }
        if !read_only {
            conn.execute_batch(
                "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS settings(name TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS images(
                 key INTEGER PRIMARY KEY AUTOINCREMENT,
                 path TEXT NOT NULL UNIQUE,
                 hash TEXT NOT NULL,
                 size INTEGER NOT NULL,
                 mtime INTEGER NOT NULL,
                 label TEXT NOT NULL,
                 row INTEGER NOT NULL,
                 norm REAL NOT NULL);
             CREATE INDEX IF NOT EXISTS images_hash ON images(hash);
             CREATE INDEX IF NOT EXISTS images_row ON images(row);
             CREATE TABLE IF NOT EXISTS vector_batches(
                 first_row INTEGER PRIMARY KEY,
                 rows INTEGER NOT NULL,
                 sha256 TEXT NOT NULL);",
            )
            .map_err(trouble)?;
        }
        // Photo facts (schema 2): added to a store made before them; a
        // reader of such a store sees them empty until a writer adds them.
        let has_meta = |conn: &Connection| conn.prepare("SELECT taken FROM images LIMIT 0").is_ok();
        if !read_only && !has_meta(&conn) {
            let added = conn.execute_batch(
                "ALTER TABLE images ADD COLUMN taken INTEGER;
                 ALTER TABLE images ADD COLUMN camera TEXT;
                 ALTER TABLE images ADD COLUMN width INTEGER;
                 ALTER TABLE images ADD COLUMN height INTEGER;",
            );
            // Another process opening the store at the same moment may have added them.
            if !has_meta(&conn) {
                added.map_err(trouble)?;
            }
        }
        if !read_only {
            conn.execute_batch("CREATE INDEX IF NOT EXISTS images_taken ON images(taken);").map_err(trouble)?;
        }
        let columns = if has_meta(&conn) { COLUMNS } else { COLUMNS_BEFORE_META };
        let setting = |name: &str| -> Result<Option<String>> {
            conn.query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(|e| db_err(dir, e))
        };
        match (setting("backbone")?, setting("dim")?) {
            (Some(b), Some(d)) => {
                if b != backbone || d != dim.to_string() {
                    return Err(Error::Store {
                        path: dir.to_path_buf(),
                        reason: format!(
                            "built with backbone {b} ({d}-d); pass --backbone {b}, or index into another --db to use {backbone}"
                        ),
                    });
                }
            }
            (None, None) if vector_bytes > VECTORS_HEADER as u64 => {
                return Err(corrupt(format!(
                    "it records no store, but vectors.f32 holds {vector_bytes} bytes of vectors"
                )));
            }
            (b, d) if b.is_some() != d.is_some() || read_only => {
                return Err(corrupt("the backbone or dimension setting is missing".into()));
            }
            _ => {
                conn.execute_batch(&format!(
                    "INSERT OR REPLACE INTO settings VALUES ('backbone', '{backbone}'), ('dim', '{dim}'), ('rows', '0'),
                         ('embedding', '{}');",
                    crate::backbone::EMBEDDING_VERSION
                ))
                .map_err(|e| db_err(dir, e))?;
            }
        }
        let rows: u64 = match setting("rows")?.map(|r| r.parse::<u64>()) {
            Some(Ok(r)) => r,
            _ => return Err(corrupt("the committed row count (setting `rows`) is missing or unreadable".into())),
        };
        let used: Option<i64> = conn.query_row("SELECT MAX(row) FROM images", [], |r| r.get(0)).map_err(trouble)?;
        if used.is_some_and(|u| u as u64 >= rows) {
            return Err(corrupt(format!(
                "images use vector row {} but only {rows} rows are committed",
                used.unwrap_or(0)
            )));
        }
        conn.busy_timeout(std::time::Duration::from_secs(60)).map_err(|e| db_err(dir, e))?;
        let mut store = Self {
            dir: dir.to_path_buf(),
            conn: std::sync::Mutex::new(conn),
            dim,
            rows,
            mmap: None,
            read_only,
            columns,
            hnsw: RwLock::new(None),
            exact: AtomicBool::new(false),
            text: RwLock::new(HashMap::new()),
            records: std::sync::Mutex::new(None),
            filtered: std::sync::Mutex::new(Vec::new()),
            writes: std::sync::atomic::AtomicU64::new(0),
        };
        if read_only {
            store.open_vectors(false)?;
            let moving = dir.join("vectors.f32.centred").exists();
            if moving || (store.rows > 0 && store.embedding_version()? < crate::backbone::EMBEDDING_VERSION) {
                return Err(Error::Store {
                    path: dir.to_path_buf(),
                    reason: "written by an older imgsearch, before centred embeddings (or being moved to them \
                             now); run `imgsearch index` on it once (it moves the stored vectors, nothing is \
                             embedded again)"
                        .into(),
                });
            }
            return Ok(store);
        }
        // An uncommitted tail is cut off only when no other process is writing.
        let lock = WriteLock::try_acquire(dir)?;
        store.open_vectors(lock.is_some())?;
        drop(lock);
        store.centre_old_vectors(backbone)?;
        Ok(store)
    }

    fn vectors_path(&self) -> PathBuf {
        self.dir.join("vectors.f32")
    }

    /// Checks the vector file against the committed row count, cuts off an
    /// uncommitted tail, and maps it.
    /// Maps the committed rows; `cut_tail` (only under the write lock) cuts
    /// off rows a batch appended but never committed.
    fn open_vectors(&mut self, cut_tail: bool) -> Result<()> {
        let path = self.vectors_path();
        let row_bytes = (self.dim * 4) as u64;
        if !path.exists() && !self.read_only {
            let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
            let mut header = [0u8; VECTORS_HEADER];
            header[..8].copy_from_slice(VECTORS_MAGIC);
            header[8..12].copy_from_slice(&(self.dim as u32).to_le_bytes());
            f.write_all(&header).and_then(|_| f.sync_all()).map_err(|e| Error::io(&path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(cut_tail && !self.read_only)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let want = VECTORS_HEADER as u64 + self.rows * row_bytes;
        let bad = |reason: String| Error::Store {
            path: path.clone(),
            reason: format!("{reason}; the store is damaged: move it aside and re-run `imgsearch index`"),
        };
        if len < want {
            return Err(bad(format!("holds {} bytes but {} committed rows need {want}", len, self.rows)));
        }
        if len > want && cut_tail && !self.read_only {
            // Rows appended by a batch that never committed.
            file.set_len(want).map_err(|e| Error::io(&path, e))?;
        }
        // SAFETY: the file is only appended to (under the write lock), and
        // cut only past the committed rows this map covers.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        if &mmap[..8] != VECTORS_MAGIC || u32::from_le_bytes(mmap[8..12].try_into().unwrap()) as usize != self.dim {
            return Err(bad("bad header (not an imgsearch vector file, or another dimension)".into()));
        }
        self.mmap = Some(mmap);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The write lock of this store (also for the files derived beside it).
    pub fn write_lock(&self) -> Result<WriteLock> {
        if self.read_only {
            return Err(Error::Store {
                path: self.dir.clone(),
                reason: "opened for reading only; this command cannot change the store".into(),
            });
        }
        WriteLock::acquire(&self.dir)
    }

    /// Whether this handle was opened by [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The row count other processes have committed.
    fn committed_rows(&self) -> Result<u64> {
        let value: Option<String> = self
            .conn()
            .query_row("SELECT value FROM settings WHERE name = 'rows'", [], |r| r.get(0))
            .optional()
            .map_err(|e| db_err(&self.dir, e))?;
        value.and_then(|v| v.parse().ok()).ok_or_else(|| Error::Store {
            path: self.dir.join("meta.sqlite"),
            reason: "the committed row count is missing or unreadable; the store is damaged".into(),
        })
    }

    /// Maps the rows committed since this handle last looked. `locked`: the
    /// caller holds the write lock (so an uncommitted tail may be cut).
    fn catch_up(&mut self, locked: bool) -> Result<bool> {
        let committed = self.committed_rows()?;
        if committed == self.rows && !locked {
            return Ok(false);
        }
        let changed = committed != self.rows;
        self.rows = committed;
        self.open_vectors(locked)?;
        Ok(changed)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// All committed unit vectors, row-major `[rows, dim]`.
    pub fn vectors(&self) -> &[f32] {
        let mmap = self.mmap.as_ref().expect("vectors are mapped on open");
        let body = &mmap[VECTORS_HEADER..VECTORS_HEADER + self.rows as usize * self.dim * 4];
        // SAFETY: the header is 64 bytes into a page-aligned map, so f32 alignment holds.
        unsafe { std::slice::from_raw_parts(body.as_ptr() as *const f32, self.rows as usize * self.dim) }
    }

    /// One row's unit vector.
    pub fn vector(&self, row: u64) -> &[f32] {
        &self.vectors()[row as usize * self.dim..(row as usize + 1) * self.dim]
    }

    /// The SQLite connection (a panic elsewhere does not poison the store).
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn records(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<ImageRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| db_err(&self.dir, e))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(ImageRecord {
                    key: r.get(0)?,
                    path: r.get(1)?,
                    hash: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    mtime: r.get(4)?,
                    label: r.get(5)?,
                    row: r.get::<_, i64>(6)? as u64,
                    norm: r.get::<_, f64>(7)? as f32,
                    meta: crate::metadata::PhotoMeta {
                        taken: r.get(8)?,
                        camera: r.get(9)?,
                        width: r.get(10)?,
                        height: r.get(11)?,
                    },
                })
            })
            .map_err(|e| db_err(&self.dir, e))?;
        rows.collect::<std::result::Result<_, _>>().map_err(|e| db_err(&self.dir, e))
    }

    /// Every image, by key.
    pub fn all(&self) -> Result<Vec<ImageRecord>> {
        self.records(&format!("{} ORDER BY key", self.columns), [])
    }

    pub fn by_key(&self, key: i64) -> Result<Option<ImageRecord>> {
        Ok(self.records(&format!("{} WHERE key = ?1", self.columns), [key])?.pop())
    }

    pub fn by_path(&self, path: &str) -> Result<Option<ImageRecord>> {
        Ok(self.records(&format!("{} WHERE path = ?1", self.columns), [path])?.pop())
    }

    pub fn by_hash(&self, hash: &str) -> Result<Vec<ImageRecord>> {
        self.records(&format!("{} WHERE hash = ?1 ORDER BY key", self.columns), [hash])
    }

    /// The images behind an index's hits, nearest first, at least `k` when
    /// there are: `search(want)` is asked for more hits until `k` images
    /// come back or the index has no more (rows no image uses any more
    /// give none; identical files share a row and give several).
    pub fn images_for_hits(
        &self,
        k: usize,
        filter: &Filter,
        search: impl Fn(usize) -> Vec<crate::index::Hit>,
    ) -> Result<Vec<(ImageRecord, f32)>> {
        let mut want = k + 8;
        loop {
            let hits = search(want);
            let distance: std::collections::HashMap<u64, f32> =
                hits.iter().map(|h| (h.id as u64, h.distance)).collect();
            let rows: Vec<u64> = hits.iter().map(|h| h.id as u64).collect();
            let out: Vec<(ImageRecord, f32)> = self
                .by_rows(&rows)?
                .into_iter()
                .filter(|r| filter.matches(r))
                .map(|r| (distance[&r.row], r))
                .map(|(d, r)| (r, d))
                .collect();
            if out.len() >= k || hits.len() < want {
                return Ok(out);
            }
            want *= 4;
        }
    }

    /// The images using each of `rows` (a row is shared by identical files),
    /// in the order of `rows`; rows no image uses any more are left out.
    pub fn by_rows(&self, rows: &[u64]) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for &row in rows {
            out.extend(self.records(&format!("{} WHERE row = ?1 ORDER BY key", self.columns), [row as i64])?);
        }
        Ok(out)
    }

    /// The raw embedding of an image: its unit row times its norm.
    pub fn embedding(&self, image: &ImageRecord) -> Vec<f32> {
        self.vector(image.row).iter().map(|v| v * image.norm).collect()
    }

    /// `(row, norm)` for every row from `from` on that an image still uses,
    /// by row. Rows no image uses any more are left out.
    pub fn row_norms(&self, from: u64) -> Result<Vec<(u64, f32)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT row, MAX(norm) FROM images WHERE row >= ?1 GROUP BY row ORDER BY row")
            .map_err(|e| db_err(&self.dir, e))?;
        let rows = stmt
            .query_map([from as i64], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, f64>(1)? as f32)))
            .map_err(|e| db_err(&self.dir, e))?;
        rows.collect::<std::result::Result<_, _>>().map_err(|e| db_err(&self.dir, e))
    }

    /// Number of committed vector rows (images with identical content share one).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn len(&self) -> Result<usize> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM images", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(|e| db_err(&self.dir, e))
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Adds a batch atomically: vectors appended and synced, then one transaction.
    /// Returns the new images' keys.
    pub fn add_batch(&mut self, images: &[NewImage]) -> Result<Vec<i64>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let _lock = self.write_lock()?;
        // Rows are assigned from what is committed now, whoever wrote it.
        self.catch_up(true)?;
        let path = self.vectors_path();
        let mut new_rows = Vec::new();
        let mut bytes = Vec::new();
        for img in images {
            if let Some((unit, norm)) = img.unit_embedding(self.dim)? {
                unit.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
                new_rows.push((self.rows + new_rows.len() as u64, norm));
            }
        }
        if !bytes.is_empty() {
            let mut f = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
            f.write_all(&bytes).and_then(|_| f.sync_data()).map_err(|e| Error::io(&path, e))?;
        }
        let rows_after = self.rows + new_rows.len() as u64;
        let first_row = self.rows;
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction().map_err(|e| db_err(&self.dir, e))?;
        if !bytes.is_empty() {
            // Each batch's checksum, for `imgsearch verify`.
            use sha2::Digest;
            tx.execute(
                "INSERT OR REPLACE INTO vector_batches VALUES (?1, ?2, ?3)",
                params![first_row as i64, new_rows.len() as i64, format!("{:x}", sha2::Sha256::digest(&bytes))],
            )
            .map_err(|e| db_err(&self.dir, e))?;
        }
        let mut keys = Vec::with_capacity(images.len());
        {
            let mut fresh = new_rows.iter();
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO images(path, hash, size, mtime, label, row, norm, taken, camera, width, height)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT(path) DO UPDATE SET hash = excluded.hash, size = excluded.size, mtime = excluded.mtime,
                         label = excluded.label, row = excluded.row, norm = excluded.norm, taken = excluded.taken,
                         camera = excluded.camera, width = excluded.width, height = excluded.height
                     RETURNING key",
                )
                .map_err(|e| db_err(&self.dir, e))?;
            for img in images {
                let (row, norm) = match &img.vector {
                    NewVector::Embedding(_) => *fresh.next().unwrap(),
                    NewVector::SameAs { row, norm } => (*row, *norm),
                };
                let key: i64 = insert
                    .query_row(
                        params![
                            img.path,
                            img.hash,
                            img.size as i64,
                            img.mtime,
                            img.label,
                            row as i64,
                            norm as f64,
                            img.meta.taken,
                            img.meta.camera,
                            img.meta.width,
                            img.meta.height
                        ],
                        |r| r.get(0),
                    )
                    .map_err(|e| db_err(&self.dir, e))?;
                keys.push(key);
            }
            tx.execute("UPDATE settings SET value = ?1 WHERE name = 'rows'", [rows_after.to_string()])
                .map_err(|e| db_err(&self.dir, e))?;
        }
        tx.commit().map_err(|e| db_err(&self.dir, e))?;
        self.rows = rows_after;
        if !new_rows.is_empty() {
            self.open_vectors(true)?;
        }
        Ok(keys)
    }

    /// Records that an image moved (same content, new path): no re-embedding.
    pub fn update_location(&mut self, key: i64, path: &str, size: u64, mtime: i64, label: &str) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let _lock = self.write_lock()?;
        self.conn()
            .execute(
                "UPDATE images SET path = ?2, size = ?3, mtime = ?4, label = ?5 WHERE key = ?1",
                params![key, path, size as i64, mtime, label],
            )
            .map_err(|e| db_err(&self.dir, e))?;
        Ok(())
    }

    /// Records images' photo facts by key, in one transaction (filled in
    /// for images indexed before they were kept).
    pub fn update_meta(&mut self, facts: &[(i64, crate::metadata::PhotoMeta)]) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let _lock = self.write_lock()?;
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction().map_err(|e| db_err(&self.dir, e))?;
        for (key, m) in facts {
            tx.execute(
                "UPDATE images SET taken = ?2, camera = ?3, width = ?4, height = ?5 WHERE key = ?1",
                params![key, m.taken, m.camera, m.width, m.height],
            )
            .map_err(|e| db_err(&self.dir, e))?;
        }
        tx.commit().map_err(|e| db_err(&self.dir, e))
    }

    /// Deletes images by key, in one transaction.
    pub fn delete(&mut self, keys: &[i64]) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let _lock = self.write_lock()?;
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction().map_err(|e| db_err(&self.dir, e))?;
        for key in keys {
            tx.execute("DELETE FROM images WHERE key = ?1", [key]).map_err(|e| db_err(&self.dir, e))?;
        }
        tx.commit().map_err(|e| db_err(&self.dir, e))
    }
}

impl ImageStore for Store {
    fn folder(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn is_stale(&self) -> Result<bool> {
        // A stat first (about a microsecond, on every request of `serve`):
        // rows are appended before they are committed, so a file no longer
        // than what is mapped means nothing new was committed.
        let mapped = VECTORS_HEADER as u64 + self.rows * (self.dim * 4) as u64;
        let len = std::fs::metadata(self.vectors_path()).map(|m| m.len()).unwrap_or(mapped);
        if len <= mapped {
            return Ok(false);
        }
        Ok(self.committed_rows()? != self.rows)
    }

    fn refresh(&mut self) -> Result<bool> {
        self.catch_up(false)
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn all(&self) -> Result<Vec<ImageRecord>> {
        Store::all(self)
    }

    fn by_key(&self, key: i64) -> Result<Option<ImageRecord>> {
        Store::by_key(self, key)
    }

    fn list(&self, sort: Sort, cursor: Option<Cursor>, limit: usize, filter: &Filter) -> Result<Vec<ImageRecord>> {
        // Over the records kept in memory for filters (read again after any write).
        Ok(super::list_records(self.cached_records()?.1.iter().cloned(), sort, cursor, limit, filter))
    }

    fn by_path(&self, path: &str) -> Result<Option<ImageRecord>> {
        Store::by_path(self, path)
    }

    fn by_hash(&self, hash: &str) -> Result<Vec<ImageRecord>> {
        Store::by_hash(self, hash)
    }

    fn embedding(&self, image: &ImageRecord) -> Result<Vec<f32>> {
        Ok(Store::embedding(self, image))
    }

    fn len(&self) -> Result<usize> {
        Store::len(self)
    }

    fn add_batch(&mut self, images: &[NewImage]) -> Result<Vec<i64>> {
        Store::add_batch(self, images)
    }

    fn update_location(&mut self, key: i64, path: &str, size: u64, mtime: i64, label: &str) -> Result<()> {
        Store::update_location(self, key, path, size, mtime, label)
    }

    fn delete(&mut self, keys: &[i64]) -> Result<()> {
        Store::delete(self, keys)
    }

    fn update_meta(&mut self, facts: &[(i64, crate::metadata::PhotoMeta)]) -> Result<()> {
        Store::update_meta(self, facts)
    }

    fn vector_rows(&self) -> Result<u64> {
        Ok(self.rows())
    }

    fn set_exact(&self, exact: bool) {
        self.exact.store(exact, Ordering::Relaxed);
    }

    fn searches_a_graph(&self) -> bool {
        matches!(*self.hnsw.read().unwrap_or_else(|e| e.into_inner()), Some(Some(_))) && !self.is_exact()
    }

    fn search(&self, query: &StoreQuery<'_>, want: usize, filter: &Filter) -> Result<Vec<(ImageRecord, f32)>> {
        let mut hits = self.search_rows(query, want, filter)?;
        // `images_for_hits` may widen past `want` (rows shared by copies).
        hits.truncate(want);
        Ok(hits)
    }

    fn sync_text_side(&self, side: &TextSide<'_>, _hashes: Option<&[String]>) -> Result<usize> {
        let before = self.synced_text_len(side);
        Ok(self.text_vectors(side)?.len().saturating_sub(before))
    }

    fn text_side_len(&self, side: &TextSide<'_>) -> Result<usize> {
        Ok(self.text_vectors(side)?.len())
    }

    fn near_pairs(&self, max_distance: f32) -> Result<Vec<(i64, i64, f32)>> {
        self.near_pairs_in_graph(max_distance)
    }

    fn upkeep(&self) -> Result<Option<usize>> {
        let mut graph = self.hnsw.write().unwrap_or_else(|e| e.into_inner());
        let current = graph.take().flatten();
        match self.updated_hnsw(current) {
            Ok(g) => {
                let rows = g.as_ref().map(|g| g.len());
                *graph = Some(g);
                Ok(rows)
            }
            Err(e) => {
                *graph = Some(None);
                Err(e)
            }
        }
    }

    fn model_id(&self) -> Result<Option<i64>> {
        Ok(model::exists(&self.dir).then_some(0))
    }

    fn model(&self) -> Result<Option<StoredModel>> {
        model::load(&self.dir)
    }

    fn save_model(&self, model: &NewModel<'_>, projection: &dyn Projection) -> Result<SavedModel> {
        {
            let _lock = self.write_lock()?;
            model::save(&self.dir, model)?;
        }
        let side = TextSide { name: "trained", model_id: Some(0), projection };
        let location = model::model_dir(&self.dir).display().to_string();
        Ok(SavedModel { id: 0, rows: self.text_side_len(&side)?, location })
    }

    fn verify(&self, sides: &[TextSide<'_>]) -> Result<Checked> {
        self.check(sides)
    }
}

#[cfg(test)]
mod tests;
