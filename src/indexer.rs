//! Indexing a collection: walk folders, decide per file what changed, embed
//! only new content, and write to the store in atomic batches.
//!
//! Per file: same path, size and mtime as stored -> unchanged (not even
//! read). Otherwise its content hash decides: a stored image with that hash
//! whose file is gone -> a move (path updated, no re-embedding); one whose
//! file still exists -> a copy (shares its vector row); else the file is
//! embedded. Stored images under the indexed folders that were not seen are
//! removed. Bad files are reported and skipped; the run goes on.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::backbone::Embedder;
use crate::files::{path_to_text, text_to_path};
use crate::store::{ImageRecord, ImageStore, NewImage, NewVector};
use crate::{Error, Result};

/// File extensions indexed (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif", "hif", "dng", "cr2", "nef", "nrw", "arw",
];

/// Images written per store transaction.
const BATCH: usize = 64;

/// What an indexing run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct IndexReport {
    pub embedded: usize,
    pub unchanged: usize,
    pub moved: usize,
    pub copies: usize,
    pub removed: usize,
    /// Unchanged images given their photo facts (indexed before they were kept).
    pub dated: usize,
    /// Files or folders skipped, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Files indexed with a doubt (a JPEG cut short), with the reason.
    pub warnings: Vec<(PathBuf, String)>,
    pub seconds: f64,
}

/// A file found by the walk.
struct Found {
    path: PathBuf,
    size: u64,
    mtime: i64,
}

/// The label of an image: its parent folder's name (`dining_table`).
pub fn label_of(path: &Path) -> String {
    path.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// sha256 of a file, hex.
pub fn content_hash(path: &Path) -> Result<String> {
    Ok(inspect(path)?.0)
}

/// What indexing says of a file cut short.
pub const CUT_SHORT: &str =
    "the JPEG ends before its end marker (copied only in part?); indexed with the missing part grey";

/// A file's content hash, and a warning when it is a JPEG cut short (read once).
fn inspect(path: &Path) -> Result<(String, Option<&'static str>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let warning = crate::backbone::jpeg_cut_short(&bytes).then_some(CUT_SHORT);
    Ok((format!("{:x}", Sha256::digest(&bytes)), warning))
}

/// A file's modification time as the store records it (nanoseconds since the epoch).
pub fn mtime_nanos(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Largest file indexed; a bigger "image" is skipped with its size.
pub const MAX_FILE_BYTES: u64 = 512 << 20;

/// The folder walk: regular image files only (no FIFOs, devices or
/// sockets, which could hang or never end), hidden entries and the store's
/// own folder skipped, each folder walked once by (device, inode) so link
/// loops end, and links leading out of the indexed folder skipped. Every
/// skipped entry is reported with its reason.
struct Walk<'a> {
    root: &'a Path,
    skip: &'a [PathBuf],
    visited: HashSet<(u64, u64)>,
    found: &'a mut Vec<Found>,
    failed: &'a mut Vec<(PathBuf, String)>,
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

impl Walk<'_> {
    fn walk(&mut self, dir: &Path) {
        use std::os::unix::fs::MetadataExt;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.failed.push((dir.to_path_buf(), format!("cannot read folder: {e}")));
                return;
            }
        };
        let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                self.failed.push((path, "cannot read file metadata (broken link?)".into()));
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                match path.canonicalize() {
                    Ok(target) if target.starts_with(self.root) => {}
                    _ => {
                        if meta.is_dir() || is_image_name(&path) {
                            self.failed.push((path, "a link to outside the indexed folder: skipped".into()));
                        }
                        continue;
                    }
                }
            }
            if meta.is_dir() {
                if path.canonicalize().is_ok_and(|c| self.skip.contains(&c)) {
                    continue;
                }
                if !self.visited.insert((meta.dev(), meta.ino())) {
                    self.failed
                        .push((path, "a folder already walked (a link loop or a second link to it): skipped".into()));
                    continue;
                }
                self.walk(&path);
            } else if is_image_name(&path) {
                if !meta.is_file() {
                    self.failed.push((path, "not a regular file (a pipe, device or socket): skipped".into()));
                } else if meta.len() > MAX_FILE_BYTES {
                    self.failed.push((
                        path,
                        format!("{} bytes, over the {} MB limit: skipped", meta.len(), MAX_FILE_BYTES >> 20),
                    ));
                } else {
                    self.found.push(Found { path, size: meta.len(), mtime: mtime_nanos(&meta) });
                }
            }
        }
    }
}

/// How long `index` waits for a store that went away (a database restart)
/// before giving up; what was written before is kept either way.
pub const WAIT_FOR_STORE: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs a store call, waiting (and saying so) while the store is unavailable.
fn waiting<T>(mut call: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let mut told = false;
    loop {
        match call() {
            Err(Error::Unavailable { what, reason }) if start.elapsed() < WAIT_FOR_STORE => {
                if !told {
                    eprintln!(
                        "{what} is unavailable ({reason}); retrying for up to {} minutes, nothing written so far is lost",
                        WAIT_FOR_STORE.as_secs() / 60
                    );
                    told = true;
                }
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Indexes `roots` into `store`. `on_progress(done, total)` is called as files are embedded.
pub fn index_folders(
    store: &mut dyn ImageStore,
    embedder: &Embedder,
    roots: &[PathBuf],
    mut on_progress: impl FnMut(usize, usize),
) -> Result<IndexReport> {
    let start = Instant::now();
    let mut report = IndexReport::default();
    let mut found = Vec::new();
    let mut walked_roots = Vec::new();
    // The store's own folder (thumbnails, uploads) is never indexed as photos.
    let skip: Vec<PathBuf> = store.folder().and_then(|d| d.canonicalize().ok()).into_iter().collect();
    for root in roots {
        match root.canonicalize() {
            Ok(r) if r.is_dir() => {
                use std::os::unix::fs::MetadataExt;
                let mut visited = HashSet::new();
                if let Ok(m) = std::fs::metadata(&r) {
                    visited.insert((m.dev(), m.ino()));
                }
                Walk { root: &r, skip: &skip, visited, found: &mut found, failed: &mut report.failed }.walk(&r);
                walked_roots.push(r);
            }
            Ok(r) => report.failed.push((r, "not a folder".into())),
            Err(e) => report.failed.push((root.clone(), format!("folder not found: {e}"))),
        }
    }
    let stored = waiting(|| store.all())?;
    let by_path: HashMap<&str, &ImageRecord> = stored.iter().map(|r| (r.path.as_str(), r)).collect();
    let seen: HashSet<String> = found.iter().map(|f| path_to_text(&f.path)).collect();

    // Files whose content must be identified.
    let mut to_embed: Vec<(Found, String)> = Vec::new();
    let mut copies: Vec<(Found, String)> = Vec::new();
    let mut moved_from: HashSet<String> = HashSet::new();
    let mut first_of_hash: HashSet<String> = HashSet::new();
    let mut undated: Vec<(i64, crate::metadata::PhotoMeta)> = Vec::new();
    for f in found {
        let path = path_to_text(&f.path);
        if let Some(r) = by_path.get(path.as_str()) {
            if r.size == f.size && r.mtime == f.mtime {
                report.unchanged += 1;
                if r.meta.taken.is_none() {
                    undated.push((r.key, crate::metadata::read(&f.path, f.mtime)));
                }
                continue;
            }
        }
        let hash = match inspect(&f.path) {
            Ok((h, warning)) => {
                if let Some(w) = warning {
                    report.warnings.push((f.path.clone(), w.into()));
                }
                h
            }
            Err(e) => {
                report.failed.push((f.path, format!("disappeared or unreadable while indexing: {e}")));
                continue;
            }
        };
        let same_content = waiting(|| store.by_hash(&hash))?;
        let gone = same_content.iter().find(|r| {
            r.path != path
                && !seen.contains(&r.path)
                && !text_to_path(&r.path).exists()
                && !moved_from.contains(&r.path)
        });
        if let (Some(old), None) = (gone, by_path.get(path.as_str())) {
            waiting(|| store.update_location(old.key, &path, f.size, f.mtime, &label_of(&f.path)))?;
            moved_from.insert(old.path.clone());
            report.moved += 1;
        } else if !same_content.is_empty() {
            copies.push((f, hash));
        } else if first_of_hash.insert(hash.clone()) {
            to_embed.push((f, hash));
        } else {
            copies.push((f, hash)); // a copy of a file embedded in this run
        }
    }

    // Photo facts for images indexed before they were kept: no re-embedding.
    for chunk in undated.chunks(BATCH) {
        waiting(|| store.update_meta(chunk))?;
        report.dated += chunk.len();
    }

    // Embed new content; write a batch at a time.
    let total = to_embed.len();
    let paths: Vec<PathBuf> = to_embed.iter().map(|(f, _)| f.path.clone()).collect();
    let mut pending: Vec<NewImage> = Vec::with_capacity(BATCH);
    let mut write_error: Option<Error> = None;
    let mut done = 0;
    // Results arrive as decoding finishes; they are stored in walk order,
    // so keys (and the page's "added" order) do not depend on timing.
    let mut arrived: std::collections::BTreeMap<usize, Option<NewImage>> = Default::default();
    let mut next = 0;
    embedder.embed_files(&paths, |i, result| {
        done += 1;
        on_progress(done, total);
        let (f, hash) = &to_embed[i];
        let image = match result {
            Ok(e) => Some(NewImage {
                path: path_to_text(&f.path),
                hash: hash.clone(),
                size: f.size,
                mtime: f.mtime,
                label: label_of(&f.path),
                vector: NewVector::Embedding(e.embedding),
                meta: crate::metadata::read(&f.path, f.mtime),
            }),
            Err(e) => {
                report.failed.push((f.path.clone(), e.to_string()));
                None
            }
        };
        arrived.insert(i, image);
        while let Some(image) = arrived.remove(&next) {
            pending.extend(image);
            next += 1;
        }
        if pending.len() >= BATCH && write_error.is_none() {
            match waiting(|| store.add_batch(&pending)) {
                Ok(keys) => report.embedded += keys.len(),
                Err(e) => write_error = Some(e),
            }
            pending.clear();
        }
    });
    if let Some(e) = write_error {
        return Err(e);
    }
    if !pending.is_empty() {
        report.embedded += waiting(|| store.add_batch(&pending))?.len();
    }

    // Copies share the row of the content already stored.
    let mut copy_batch = Vec::new();
    for (f, hash) in copies {
        match waiting(|| store.by_hash(&hash))?.into_iter().next() {
            Some(original) => copy_batch.push(NewImage {
                path: path_to_text(&f.path),
                hash,
                size: f.size,
                mtime: f.mtime,
                label: label_of(&f.path),
                vector: NewVector::SameAs { row: original.row, norm: original.norm },
                meta: crate::metadata::read(&f.path, f.mtime),
            }),
            None => report.failed.push((f.path, "its identical original failed to embed".into())),
        }
    }
    report.copies = copy_batch.len();
    if !copy_batch.is_empty() {
        waiting(|| store.add_batch(&copy_batch))?;
    }

    // Stored images under the indexed folders that are gone.
    let removed: Vec<i64> = stored
        .iter()
        .filter(|r| !seen.contains(&r.path) && !moved_from.contains(&r.path))
        .filter(|r| walked_roots.iter().any(|root| text_to_path(&r.path).starts_with(root)))
        .map(|r| r.key)
        .collect();
    report.removed = removed.len();
    waiting(|| store.delete(&removed))?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Adds one file (or refreshes it if it changed) and returns its record.
/// `embed` runs only when no stored image has the same content.
pub fn add_file(
    store: &mut dyn ImageStore,
    path: &Path,
    embed: impl FnOnce(&Path) -> Result<Vec<f32>>,
) -> Result<ImageRecord> {
    let path = path.canonicalize().map_err(|e| Error::io(path, e))?;
    let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
    let (size, mtime) = (meta.len(), mtime_nanos(&meta));
    let path_str = path_to_text(&path);
    if let Some(r) = store.by_path(&path_str)? {
        if r.size == size && r.mtime == mtime {
            return Ok(r);
        }
        store.delete(&[r.key])?;
    }
    let hash = content_hash(&path)?;
    let vector = match store.by_hash(&hash)?.into_iter().next() {
        Some(original) => NewVector::SameAs { row: original.row, norm: original.norm },
        None => NewVector::Embedding(embed(&path)?),
    };
    let meta = crate::metadata::read(&path, mtime);
    let image = NewImage { path: path_str.clone(), hash, size, mtime, label: label_of(&path), vector, meta };
    store.add_batch(&[image])?;
    store.by_path(&path_str)?.ok_or_else(|| Error::Msg(format!("{path_str}: not found after adding")))
}
