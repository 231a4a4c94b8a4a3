//! Every indexed image's joint-space embedding, in `<db>/joint/vectors.f32`,
//! row for row with the store's `vectors.f32`.
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

use super::{Projection, Side};
use crate::store::Store;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"IMGSJNT1";
const HEADER: usize = 64;
/// Rows projected per batch (bounds memory on large stores).
const BATCH: usize = 4096;

/// The joint embeddings of a store, memory-mapped, unit length.
pub struct JointVectors {
    mmap: Mmap,
    dim: usize,
    rows: usize,
}

impl JointVectors {
    /// Where the trained side's vectors are.
    pub fn path(db: &Path) -> PathBuf {
        Self::path_for(db, Side::Trained)
    }

    /// Where `side`'s vectors are: one file per side, so switching sides
    /// recomputes nothing.
    pub fn path_for(db: &Path, side: Side) -> PathBuf {
        let name = match side {
            Side::Trained => "vectors.f32",
            Side::ZeroShot => "zero-shot.f32",
            Side::Fused => "fused.f32",
        };
        super::model_dir(db).join(name)
    }

    /// Brings the vectors at `path` up to date with `model` (a projection)
    /// and maps them: rows made by another projection are recomputed,
    /// missing rows added.
    pub fn update(store: &Store, model: &dyn Projection, path: &Path) -> Result<Self> {
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
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: only `update` writes this file, appending past the mapped length.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let rows = store.rows() as usize;
        if mmap.len() < HEADER + rows * dim * 4 {
            return Err(Error::Store {
                path,
                reason: "joint vectors shorter than their header says; delete the file to recompute it".into(),
            });
        }
        Ok(Self { mmap, dim, rows })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// All rows, `[rows, dim]`, unit length (zero for rows no image uses).
    pub fn vectors(&self) -> &[f32] {
        let body = &self.mmap[HEADER..HEADER + self.rows * self.dim * 4];
        // SAFETY: the body starts 64 bytes into a page-aligned map.
        unsafe { std::slice::from_raw_parts(body.as_ptr() as *const f32, self.rows * self.dim) }
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
    let in_dim = store.dim();
    let total = store.rows();
    let norms = store.row_norms(covered)?;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io(path, e))?;
    let start = HEADER as u64 + covered * dim as u64 * 4;
    // Cut off rows an interrupted update left past the committed count.
    f.set_len(start).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(start)).map_err(|e| Error::io(path, e))?;
    let mut norm_at = norms.iter().peekable();
    let mut row = covered;
    while row < total {
        let end = (row + BATCH as u64).min(total);
        // Raw embeddings of the rows in use; unused rows stay zero.
        let mut used = Vec::new();
        let mut features = Vec::new();
        for r in row..end {
            while norm_at.peek().is_some_and(|(nr, _)| *nr < r) {
                norm_at.next();
            }
            if let Some(&&(nr, norm)) = norm_at.peek() {
                if nr == r {
                    used.push(r);
                    features.extend(store.vector(r).iter().map(|v| v * norm));
                }
            }
        }
        debug_assert_eq!(features.len(), used.len() * in_dim);
        let projected = model.project(&features)?;
        let mut out = vec![0f32; (end - row) as usize * dim];
        for (r, p) in used.iter().zip(projected.chunks_exact(dim)) {
            let n = p.iter().map(|v| v * v).sum::<f32>().sqrt();
            let o = (r - row) as usize * dim;
            if n > 0.0 {
                out[o..o + dim].iter_mut().zip(p).for_each(|(o, v)| *o = v / n);
            }
        }
        let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        f.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        row = end;
    }
    f.sync_all().map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(32)).map_err(|e| Error::io(path, e))?;
    f.write_all(&total.to_le_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}
