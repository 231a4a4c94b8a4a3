//! Where images, embeddings and metadata persist, behind [`ImageStore`]:
//! the embedded store ([`Store`], the default: one data directory with no
//! server to start) and the shared one on PostgreSQL + pgvector
//! ([`postgres::PgStore`], `--db postgres://...`); an in-memory one for
//! tests ([`memory::MemoryStore`]).
//!
//! Adding a backend is one file here plus its entry in the shared store
//! suite: [`memory::MemoryStore`] shows the smallest one.

use std::path::Path;

use crate::{Error, Result};

mod folder;
pub mod memory;
pub mod postgres;

pub use folder::{Store, TextVectors, VerifyReport, WriteLock};

/// What every store does: the indexer, search and the shared test suite
/// (`tests/integration/store.rs`) see only this.
pub trait ImageStore: Send + Sync {
    /// Where it is, for messages: a folder, or `PostgreSQL host:port/db`.
    fn describe(&self) -> String;
    fn dim(&self) -> usize;
    /// Every image, by key.
    fn all(&self) -> Result<Vec<ImageRecord>>;
    fn by_key(&self, key: i64) -> Result<Option<ImageRecord>>;
    /// Up to `limit` images, most recently added first, with keys below
    /// `before` when given (the key of the last one seen: a page cursor).
    fn recent(&self, before: Option<i64>, limit: usize) -> Result<Vec<ImageRecord>> {
        self.list(Sort::Added, before.map(|key| Cursor { taken: None, key }), limit, &Filter::default())
    }
    /// A page of the images `filter` lets through, newest first by `sort`,
    /// after `cursor` (the last one seen). By default a scan of every
    /// record; a store with an index on the order answers it there.
    fn list(&self, sort: Sort, cursor: Option<Cursor>, limit: usize, filter: &Filter) -> Result<Vec<ImageRecord>> {
        Ok(list_records(self.all()?, sort, cursor, limit, filter))
    }
    fn by_path(&self, path: &str) -> Result<Option<ImageRecord>>;
    /// Images with this content, by key.
    fn by_hash(&self, hash: &str) -> Result<Vec<ImageRecord>>;
    /// The raw embedding of an image (its unit vector times its norm).
    fn embedding(&self, image: &ImageRecord) -> Result<Vec<f32>>;
    fn len(&self) -> Result<usize>;
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Adds (or, for a known path, replaces) a batch atomically; returns the keys.
    fn add_batch(&mut self, images: &[NewImage]) -> Result<Vec<i64>>;
    /// Records that an image moved (same content, new path): no re-embedding.
    fn update_location(&mut self, key: i64, path: &str, size: u64, mtime: i64, label: &str) -> Result<()>;
    /// Deletes images by key, atomically.
    fn delete(&mut self, keys: &[i64]) -> Result<()>;
    /// Records images' photo facts (date taken, camera, size) by key, in one
    /// transaction: filled in for images indexed before they were kept,
    /// without re-embedding.
    fn update_meta(&mut self, facts: &[(i64, crate::metadata::PhotoMeta)]) -> Result<()>;
    /// The `want` images nearest to `query`, nearest first, searched where
    /// the vectors are (the store's own index unless [`ImageStore::set_exact`]).
    /// A text query needs its side made current first
    /// ([`ImageStore::sync_text_side`]). Rows no image uses are skipped.
    /// Only images `filter` lets through count, inside the index search
    /// (so `want` come back whenever that many match).
    fn search(&self, query: &StoreQuery<'_>, want: usize, filter: &Filter) -> Result<Vec<(ImageRecord, f32)>>;
    /// The `k` images nearest to a CNN embedding `query` (any length), nearest first.
    fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<(ImageRecord, f32)>> {
        self.search(&StoreQuery::Cnn(query), k, &Filter::default())
    }
    /// Pairs of images (keys) whose CNN embeddings lie within
    /// `max_distance` of each other, each with its distance, found through
    /// the store's index, never by comparing all pairs: by default each
    /// image's few nearest by [`ImageStore::nearest`]; a store with its own
    /// graph reads its neighbour lists. A pair may come twice.
    fn near_pairs(&self, max_distance: f32) -> Result<Vec<(i64, i64, f32)>> {
        use rayon::prelude::*;
        let pairs: Vec<Vec<(i64, i64, f32)>> = self
            .all()?
            .par_iter()
            .map(|r| -> Result<Vec<(i64, i64, f32)>> {
                let near = self.nearest(&self.embedding(r)?, NEAR_PAIR_NEIGHBOURS + 1)?;
                Ok(near
                    .into_iter()
                    .filter(|(n, d)| n.key != r.key && *d <= max_distance)
                    .map(|(n, d)| (r.key, n.key, d))
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(pairs.into_iter().flatten().collect())
    }
    /// Gives every image (or only those with content `hashes`) its vector
    /// on `side`, computed from the stored embeddings; a side made by
    /// another projection is recomputed. Returns the rows added.
    fn sync_text_side(&self, side: &TextSide<'_>, hashes: Option<&[String]>) -> Result<usize>;
    /// How many images have a vector on `side`.
    fn text_side_len(&self, side: &TextSide<'_>) -> Result<usize>;
    /// Keeps the store's own search structures in step after images were
    /// added (a folder store's HNSW graph); the rows its graph covers, or
    /// `None` when searches scan exactly (or the store indexes itself).
    fn upkeep(&self) -> Result<Option<usize>> {
        Ok(None)
    }
    /// The current trained model's id (`None`: none trained); cheap, asked before each text search.
    fn model_id(&self) -> Result<Option<i64>>;
    /// The current trained model.
    fn model(&self) -> Result<Option<StoredModel>>;
    /// Makes `model` the current one for every process on the store and
    /// gives every image its vector on the trained side (`projection`).
    fn save_model(&self, model: &NewModel<'_>, projection: &dyn Projection) -> Result<SavedModel>;
    /// Adds an uploaded image with its bytes (a store that keeps uploads
    /// itself, see [`ImageStore::keeps_uploads`]); returns its key.
    fn add_upload(&mut self, image: &NewImage, _bytes: &[u8]) -> Result<i64> {
        Err(Error::Msg(format!("{}: {} keeps uploads as files, not in the store", image.path, self.describe())))
    }
    /// Whether uploads are kept in the store ([`ImageStore::add_upload`],
    /// [`ImageStore::blob`]) rather than as files in its folder.
    fn keeps_uploads(&self) -> bool {
        false
    }
    /// Checks what can be checked without the images: checksums, derived
    /// files recomputed (each text side in `sides`). A store that checks
    /// itself (a database's page checksums) says so as an error.
    fn verify(&self, _sides: &[TextSide<'_>]) -> Result<Checked> {
        Ok(Checked::default())
    }
    /// The store's own folder on this machine, if it has one (the walk skips it).
    fn folder(&self) -> Option<&Path> {
        None
    }
    /// Vector rows the store holds (identical files share one).
    fn vector_rows(&self) -> Result<u64> {
        Ok(self.len()? as u64)
    }
    /// Whether CNN searches go through an approximate index (a folder's
    /// HNSW graph once built, a database's) rather than an exact scan.
    fn searches_a_graph(&self) -> bool {
        false
    }
    /// Makes searches scan every vector instead of the store's own index.
    fn set_exact(&self, _exact: bool) {}
    /// Tells the store that this process is long-lived (the server) and may
    /// keep vectors in its own memory for searches to come: a database then
    /// scores a narrow filter's images here instead of row by row in SQL. A
    /// folder store already reads its vectors from memory.
    fn keep_vectors(&self) {}
    /// An uploaded original's bytes kept in the store (a database keeps
    /// them; a folder store keeps uploads as files).
    fn blob(&self, _hash: &str) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    /// Whether the store answers now (`/readyz`): a database server may be down.
    fn ping(&self) -> Result<()> {
        Ok(())
    }
    /// Whether another process committed changes this handle does not see yet.
    fn is_stale(&self) -> Result<bool> {
        Ok(false)
    }
    /// Picks up what other processes committed; says whether anything changed.
    fn refresh(&mut self) -> Result<bool> {
        Ok(false)
    }
}

/// Neighbours each image looks at in [`ImageStore::near_pairs`]'s default
/// (larger groups still join up through their members' neighbours).
const NEAR_PAIR_NEIGHBOURS: usize = 8;

/// Opens the store `db` names: a `postgres://` URL, else a folder.
pub fn open(db: &Path, backbone: &str, dim: usize) -> Result<Box<dyn ImageStore>> {
    match db.to_str().filter(|s| postgres::is_url(s)) {
        Some(url) => Ok(Box::new(postgres::PgStore::open(url, backbone, dim)?)),
        None => Ok(Box::new(Store::open(db, backbone, dim)?)),
    }
}

/// How stored CNN embeddings go into a text space: what a store needs to
/// keep a text side's image vectors. `joint` implements it (the zero-shot,
/// trained and fused sides).
pub trait Projection {
    fn in_dim(&self) -> usize;
    fn out_dim(&self) -> usize;
    /// Identifies the projection (weights and settings).
    fn fingerprint(&self) -> [u8; 16];
    /// `[n, in_dim]` raw embeddings (row-major, not unit length) to `[n, out_dim]`.
    fn project(&self, embeddings: &[f32]) -> Result<Vec<f32>>;
}

/// One text side as a store keeps it: images put into a text space by a projection.
#[derive(Clone, Copy)]
pub struct TextSide<'a> {
    /// `zero-shot`, `trained` or `fused`.
    pub name: &'static str,
    /// The trained model's id in the store (the trained side only): its
    /// vectors belong to that model.
    pub model_id: Option<i64>,
    pub projection: &'a dyn Projection,
}

impl TextSide<'_> {
    /// The projection's fingerprint, in lower-case hex.
    pub fn fingerprint_hex(&self) -> String {
        self.projection.fingerprint().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Which images a search may return; the default lets every image through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Under this folder: a stored path (`/photos/2023` keeps
    /// `/photos/2023/a.jpg` and `/photos/2023/trip/b.jpg`).
    pub under: Option<String>,
    /// With this label (the parent folder's name).
    pub label: Option<String>,
    /// Taken at or after (Unix seconds).
    pub after: Option<i64>,
    /// Taken before (Unix seconds).
    pub before: Option<i64>,
    /// The camera's make or model contains this (any case).
    pub camera: Option<String>,
}

impl Filter {
    /// Whether it lets every image through.
    pub fn is_empty(&self) -> bool {
        self == &Filter::default()
    }

    /// Whether `image` passes. An image without a date fails a date bound;
    /// one without a camera fails a camera filter.
    pub fn matches(&self, image: &ImageRecord) -> bool {
        let under = self.under.as_deref().map(|u| u.trim_end_matches('/'));
        under.is_none_or(|u| image.path.strip_prefix(u).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
            && self.label.as_deref().is_none_or(|l| image.label == l)
            && self.after.is_none_or(|a| image.meta.taken.is_some_and(|t| t >= a))
            && self.before.is_none_or(|b| image.meta.taken.is_some_and(|t| t < b))
            && self.camera.as_deref().is_none_or(|c| {
                image.meta.camera.as_deref().is_some_and(|m| m.to_lowercase().contains(&c.to_lowercase()))
            })
    }
}

/// How a listing is ordered, newest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// By when it was added (its key).
    #[default]
    Added,
    /// By when it was taken (images without a date last).
    Date,
}

/// Where a page of a listing starts: after this image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Its date (by [`Sort::Date`]).
    pub taken: Option<i64>,
    pub key: i64,
}

impl Cursor {
    /// The cursor after `image` in `sort` order.
    pub fn after(image: &ImageRecord, sort: Sort) -> Self {
        Cursor { taken: (sort == Sort::Date).then_some(image.meta.taken).flatten(), key: image.key }
    }

    /// As text for a URL: `key`, or `taken_key` by date (`none_key` without a date).
    pub fn to_text(&self, sort: Sort) -> String {
        match sort {
            Sort::Added => self.key.to_string(),
            Sort::Date => format!("{}_{}", self.taken.map_or("none".into(), |t| t.to_string()), self.key),
        }
    }

    /// [`Cursor::to_text`] read back; anything else is an error naming it.
    pub fn parse(text: &str, sort: Sort) -> Result<Self> {
        let bad = || {
            Error::BadQuery(format!("cursor \"{text}\" is not one this server gave (pass next_cursor back as it is)"))
        };
        match sort {
            Sort::Added => Ok(Cursor { taken: None, key: text.parse().map_err(|_| bad())? }),
            Sort::Date => {
                let (taken, key) = text.split_once('_').ok_or_else(bad)?;
                let taken = if taken == "none" { None } else { Some(taken.parse().map_err(|_| bad())?) };
                Ok(Cursor { taken, key: key.parse().map_err(|_| bad())? })
            }
        }
    }

    /// The order key, newest first: (date, key); no date sorts below any.
    fn rank(&self, sort: Sort) -> (i64, i64) {
        match sort {
            Sort::Added => (0, self.key),
            Sort::Date => (self.taken.unwrap_or(i64::MIN), self.key),
        }
    }
}

/// A page of `records`: `filter`ed, newest first by `sort`, after `cursor`.
pub fn list_records(
    records: impl IntoIterator<Item = ImageRecord>,
    sort: Sort,
    cursor: Option<Cursor>,
    limit: usize,
    filter: &Filter,
) -> Vec<ImageRecord> {
    let rank = |r: &ImageRecord| Cursor::after(r, sort).rank(sort);
    let mut out: Vec<ImageRecord> =
        records.into_iter().filter(|r| filter.matches(r) && cursor.is_none_or(|c| rank(r) < c.rank(sort))).collect();
    out.sort_by_key(|r| std::cmp::Reverse(rank(r)));
    out.truncate(limit);
    out
}

/// What a store searches with.
pub enum StoreQuery<'a> {
    /// A CNN embedding (any length: the cosine ignores it).
    Cnn(&'a [f32]),
    /// A CNN embedding, with it and every stored vector multiplied by
    /// `weights` (one ImageNet class's classifier row): an exact scan.
    Weighted { embedding: &'a [f32], weights: &'a [f32] },
    /// A vector in `side`'s text space.
    Text { side: TextSide<'a>, vector: &'a [f32] },
}

/// A trained joint model as a store keeps it.
#[derive(Debug, Clone)]
pub struct StoredModel {
    /// The store's id for it (a database's row; 0 in a folder).
    pub id: i64,
    /// `model.json`.
    pub info: String,
    /// `model.safetensors`.
    pub weights: Vec<u8>,
}

/// A trained model to save.
pub struct NewModel<'a> {
    /// `model.json`.
    pub info: &'a str,
    /// `model.safetensors`.
    pub weights: &'a [u8],
    /// The training report (JSON).
    pub report: &'a str,
}

/// Where [`ImageStore::save_model`] put a model.
#[derive(Debug, Clone)]
pub struct SavedModel {
    pub id: i64,
    /// Images given a vector on the trained side.
    pub rows: usize,
    /// Where it is, for messages: a folder, or the database and the model's id.
    pub location: String,
}

/// What [`ImageStore::verify`] found.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// What was checked and found sound, one line each.
    pub sound: Vec<String>,
    /// What is damaged, one line each, with what to do.
    pub damaged: Vec<String>,
}

/// Whether `db` names a database (a `postgres://` URL) rather than a folder.
pub fn is_database(db: &Path) -> bool {
    db.to_str().is_some_and(postgres::is_url)
}

/// One indexed image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// Stable key: never reused, survives moves and renames.
    pub key: i64,
    pub path: String,
    /// sha256 of the file's bytes.
    pub hash: String,
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime: i64,
    /// The parent folder's name, `_` separating words.
    pub label: String,
    /// Row of the unit embedding in `vectors.f32`.
    pub row: u64,
    /// The embedding's norm (raw embedding = unit row * norm).
    pub norm: f32,
    /// When it was taken, the camera, the pixel size.
    pub meta: crate::metadata::PhotoMeta,
}

/// An image to add: its file facts and either a new embedding or the row of
/// an identical file already stored.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub path: String,
    pub hash: String,
    pub size: u64,
    pub mtime: i64,
    pub label: String,
    pub vector: NewVector,
    /// When it was taken, the camera, the pixel size.
    pub meta: crate::metadata::PhotoMeta,
}

impl NewImage {
    /// For a new embedding: its unit vector and norm, checked against the store's `dim`.
    pub(crate) fn unit_embedding(&self, dim: usize) -> Result<Option<(Vec<f32>, f32)>> {
        let NewVector::Embedding(e) = &self.vector else { return Ok(None) };
        if e.len() != dim {
            return Err(Error::Msg(format!("{}: embedding has {} dims, the store {dim}", self.path, e.len())));
        }
        let mut unit = e.clone();
        let norm = crate::vector::normalize(&mut unit);
        Ok(Some((unit, norm)))
    }
}

#[derive(Debug, Clone)]
pub enum NewVector {
    Embedding(Vec<f32>),
    SameAs { row: u64, norm: f32 },
}
