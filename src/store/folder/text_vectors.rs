//! A folder store's text-side vectors: every indexed image's vector on one
//! text side, in `<db>/joint/<side>.f32` (the trained side's is
//! `vectors.f32`), row for row with the store's `vectors.f32`.
//!
//! Derived data: computed from the stored CNN embeddings (a few
//! milliseconds per thousand images), never from the images. The header
//! records which model made the rows; after retraining they are recomputed,
//! after indexing only the new rows are projected and appended. The layout:
//! `IMGSJNT1`, dim (u32), 4 spare bytes, the model fingerprint (16 bytes),
//! the committed row count (u64), zero padding to 64 bytes, unit rows.
//! Rows are appended and synced before the count is, so a crash leaves a
//! tail that the next update cuts off.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::Store;
use crate::store::Projection;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"IMGSJNT1";
const HEADER: usize = 64;
/// Rows projected per batch (bounds memory on large stores).
const BATCH: usize = 4096;

/// One text side's vectors of a store, unit length: memory-mapped from
/// their file, or (for a store opened read-only) computed in memory.
pub struct TextVectors {
    rows_data: Rows,
    dim: usize,
    rows: usize,
    /// The projection that made them.
    fingerprint: [u8; 16],
}

enum Rows {
    Mapped(Mmap),
    Owned(Vec<f32>),
}

impl TextVectors {
    /// Brings the vectors at `path` up to date with `model` (a projection)
    /// and maps them: rows made by another projection are recomputed,
    /// missing rows added.
    pub fn update(store: &Store, model: &dyn Projection, path: &Path) -> Result<Self> {
        if let Some(current) = Self::map_current(store, model, path)? {
            return Ok(current);
        }
        if store.is_read_only() {
            // A reader never writes: the rows are projected in memory
            // (milliseconds per thousand images).
            let vectors = project_rows(store, model, 0, store.rows(), &store.row_norms(0)?)?;
            return Ok(Self {
                rows_data: Rows::Owned(vectors),
                dim: model.out_dim(),
                rows: store.rows() as usize,
                fingerprint: model.fingerprint(),
            });
        }
        // Derived files are written by one process at a time too.
        let _lock = store.write_lock()?;
        let path = path.to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let dim = model.out_dim();
        let valid = read_header(&path).filter(|h| h.dim == dim && h.fingerprint == model.fingerprint());
        let covered = match valid {
            Some(h) => h.rows.min(store.rows()),
            None => {
                // Made by another model (or none): start a fresh file.
                let tmp = path.with_extension("f32.tmp");
                write_new(&tmp, dim, &model.fingerprint())?;
                std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
                0
            }
        };
        if covered < store.rows() {
            append(store, model, &path, covered)?;
        }
        Self::map(store, dim, path, model.fingerprint())
    }

    /// Checks the file at `path` by recomputing it (it is derived data):
    /// the rows that differ from a fresh projection (a flipped bit), or
    /// `None` when there is no current file for `model` to check.
    pub fn damaged_rows(store: &Store, model: &dyn Projection, path: &Path) -> Result<Option<Vec<u64>>> {
        let Some(file) = Self::map_current(store, model, path)? else { return Ok(None) };
        let fresh = project_rows(store, model, 0, store.rows(), &store.row_norms(0)?)?;
        let dim = model.out_dim();
        let differs = |a: &[f32], b: &[f32]| a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-4 || x.is_nan());
        Ok(Some(
            (0..store.rows())
                .filter(|&r| differs(file.vector(r), &fresh[r as usize * dim..(r as usize + 1) * dim]))
                .collect(),
        ))
    }

    /// The file at `path` mapped, if it was made by `model` and covers
    /// every committed row (nothing to write).
    fn map_current(store: &Store, model: &dyn Projection, path: &Path) -> Result<Option<Self>> {
        match read_header(path) {
            Some(h) if h.dim == model.out_dim() && h.fingerprint == model.fingerprint() && h.rows >= store.rows() => {
                Self::map(store, h.dim, path.to_path_buf(), h.fingerprint).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn map(store: &Store, dim: usize, path: PathBuf, fingerprint: [u8; 16]) -> Result<Self> {
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: only `update` writes this file, appending past the mapped length.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let rows = store.rows() as usize;
        if mmap.len() < HEADER + rows * dim * 4 {
            return Err(Error::Store {
                path,
                reason: "text-side vectors shorter than their header says; delete the file to recompute it".into(),
            });
        }
        Ok(Self { rows_data: Rows::Mapped(mmap), dim, rows, fingerprint })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The fingerprint of the projection that made them.
    pub fn fingerprint(&self) -> [u8; 16] {
        self.fingerprint
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// All rows, `[rows, dim]`, unit length (zero for rows no image uses).
    pub fn vectors(&self) -> &[f32] {
        match &self.rows_data {
            Rows::Mapped(mmap) => {
                let body = &mmap[HEADER..HEADER + self.rows * self.dim * 4];
                // SAFETY: the body starts 64 bytes into a page-aligned map.
                unsafe { std::slice::from_raw_parts(body.as_ptr() as *const f32, self.rows * self.dim) }
            }
            Rows::Owned(v) => &v[..self.rows * self.dim],
        }
    }

    pub fn vector(&self, row: u64) -> &[f32] {
        &self.vectors()[row as usize * self.dim..(row as usize + 1) * self.dim]
    }
}

struct Header {
    dim: usize,
    fingerprint: [u8; 16],
    rows: u64,
}

fn read_header(path: &Path) -> Option<Header> {
    use std::io::Read;
    let mut h = [0u8; HEADER];
    std::fs::File::open(path).ok()?.read_exact(&mut h).ok()?;
    if &h[..8] != MAGIC {
        return None;
    }
    Some(Header {
        dim: u32::from_le_bytes(h[8..12].try_into().ok()?) as usize,
        fingerprint: h[16..32].try_into().ok()?,
        rows: u64::from_le_bytes(h[32..40].try_into().ok()?),
    })
}

fn write_new(path: &Path, dim: usize, fingerprint: &[u8; 16]) -> Result<()> {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&(dim as u32).to_le_bytes());
    h[16..32].copy_from_slice(fingerprint);
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&h).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// Projects rows `covered..store.rows()` and appends them, then commits the count.
fn append(store: &Store, model: &dyn Projection, path: &Path, covered: u64) -> Result<()> {
    let dim = model.out_dim();
    let total = store.rows();
    let norms = store.row_norms(covered)?;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io(path, e))?;
    let start = HEADER as u64 + covered * dim as u64 * 4;
    // Cut off rows an interrupted update left past the committed count.
    f.set_len(start).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(start)).map_err(|e| Error::io(path, e))?;
    let mut row = covered;
    while row < total {
        let end = (row + BATCH as u64).min(total);
        let out = project_rows(store, model, row, end, &norms)?;
        let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        f.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        row = end;
    }
    f.sync_all().map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(32)).map_err(|e| Error::io(path, e))?;
    f.write_all(&total.to_le_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// The unit joint vectors of rows `from..to`, `[to - from, dim]` (zero for
/// rows no image uses), projected [`BATCH`] rows at a time; `norms` are
/// `(row, norm)` of the rows in use, sorted by row.
fn project_rows(store: &Store, model: &dyn Projection, from: u64, to: u64, norms: &[(u64, f32)]) -> Result<Vec<f32>> {
    let dim = model.out_dim();
    let mut out = vec![0f32; (to - from) as usize * dim];
    let first = norms.partition_point(|(r, _)| *r < from);
    let last = norms.partition_point(|(r, _)| *r < to);
    for batch in norms[first..last].chunks(BATCH) {
        let features: Vec<f32> =
            batch.iter().flat_map(|&(r, norm)| store.vector(r).iter().map(move |v| v * norm)).collect();
        let projected = model.project(&features)?;
        for (&(r, _), p) in batch.iter().zip(projected.chunks_exact(dim)) {
            let o = (r - from) as usize * dim;
            out[o..o + dim].copy_from_slice(p);
            crate::vector::normalize(&mut out[o..o + dim]);
        }
    }
    Ok(out)
}
