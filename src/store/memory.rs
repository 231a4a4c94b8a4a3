//! An in-memory store: nothing touches the disk. For tests (the shared
//! store suite runs it beside the folder store and PostgreSQL) and for
//! throwaway collections.
//!
//! A [`MemoryPlace`] stands where a folder or a database would: handles
//! opened on one place share its images, as two processes share a store,
//! and the place remembers which backbone filled it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{ImageRecord, ImageStore, NewImage, NewVector};
use crate::{Error, Result};

/// Where an in-memory store lives; clones are the same place.
#[derive(Clone, Default)]
pub struct MemoryPlace(Arc<Mutex<Option<Contents>>>);

struct Contents {
    backbone: String,
    dim: usize,
    images: BTreeMap<i64, ImageRecord>,
    /// Unit vectors, one per row; rows are never reused.
    rows: Vec<Vec<f32>>,
    next_key: i64,
}

/// A store held in memory.
pub struct MemoryStore {
    place: MemoryPlace,
    dim: usize,
}

impl MemoryStore {
    /// Opens (or, the first time, fills) `place` for embeddings of
    /// `backbone` with `dim` dimensions; another backbone is refused.
    pub fn open(place: &MemoryPlace, backbone: &str, dim: usize) -> Result<Self> {
        let mut contents = place.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*contents {
            Some(c) if c.backbone != backbone || c.dim != dim => {
                return Err(Error::Store {
                    path: "memory".into(),
                    reason: format!(
                        "built with backbone {} ({}-d); pass --backbone {}, or use another store for {backbone}",
                        c.backbone, c.dim, c.backbone
                    ),
                })
            }
            Some(_) => {}
            None => {
                *contents = Some(Contents {
                    backbone: backbone.to_owned(),
                    dim,
                    images: BTreeMap::new(),
                    rows: Vec::new(),
                    next_key: 1,
                })
            }
        }
        Ok(Self { place: place.clone(), dim })
    }

    fn contents(&self) -> MutexGuard<'_, Option<Contents>> {
        self.place.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Contents) -> T) -> T {
        f(self.contents().as_mut().expect("filled on open"))
    }
}

impl ImageStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn all(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.with(|c| c.images.values().cloned().collect()))
    }

    fn by_key(&self, key: i64) -> Result<Option<ImageRecord>> {
        Ok(self.with(|c| c.images.get(&key).cloned()))
    }

    fn recent(&self, before: Option<i64>, limit: usize) -> Result<Vec<ImageRecord>> {
        let before = before.unwrap_or(i64::MAX);
        Ok(self.with(|c| c.images.range(..before).rev().take(limit).map(|(_, r)| r.clone()).collect()))
    }

    fn by_path(&self, path: &str) -> Result<Option<ImageRecord>> {
        Ok(self.with(|c| c.images.values().find(|r| r.path == path).cloned()))
    }

    fn by_hash(&self, hash: &str) -> Result<Vec<ImageRecord>> {
        Ok(self.with(|c| c.images.values().filter(|r| r.hash == hash).cloned().collect()))
    }

    fn embedding(&self, image: &ImageRecord) -> Result<Vec<f32>> {
        self.with(|c| {
            let row = c.rows.get(image.row as usize).ok_or_else(|| Error::Msg(format!("no row {}", image.row)))?;
            Ok(row.iter().map(|v| v * image.norm).collect())
        })
    }

    fn len(&self) -> Result<usize> {
        Ok(self.with(|c| c.images.len()))
    }

    fn vector_rows(&self) -> Result<u64> {
        Ok(self.with(|c| c.rows.len() as u64))
    }

    fn add_batch(&mut self, images: &[NewImage]) -> Result<Vec<i64>> {
        // Checked first, so a bad image changes nothing (a batch is atomic).
        let mut units = Vec::with_capacity(images.len());
        for image in images {
            units.push(image.unit_embedding(self.dim)?);
        }
        Ok(self.with(|c| {
            let mut keys = Vec::with_capacity(images.len());
            for (image, unit) in images.iter().zip(units) {
                let (row, norm) = match (&image.vector, unit) {
                    (_, Some((unit, norm))) => {
                        c.rows.push(unit);
                        (c.rows.len() as u64 - 1, norm)
                    }
                    (NewVector::SameAs { row, norm }, None) => (*row, *norm),
                    (NewVector::Embedding(_), None) => unreachable!("an embedding has a unit vector"),
                };
                let known = c.images.values().find(|r| r.path == image.path).map(|r| r.key);
                let key = known.unwrap_or_else(|| {
                    c.next_key += 1;
                    c.next_key - 1
                });
                let record = ImageRecord {
                    key,
                    path: image.path.clone(),
                    hash: image.hash.clone(),
                    size: image.size,
                    mtime: image.mtime,
                    label: image.label.clone(),
                    row,
                    norm,
                };
                c.images.insert(key, record);
                keys.push(key);
            }
            keys
        }))
    }

    fn update_location(&mut self, key: i64, path: &str, size: u64, mtime: i64, label: &str) -> Result<()> {
        self.with(|c| {
            if let Some(r) = c.images.get_mut(&key) {
                (r.path, r.size, r.mtime, r.label) = (path.to_owned(), size, mtime, label.to_owned());
            }
        });
        Ok(())
    }

    fn delete(&mut self, keys: &[i64]) -> Result<()> {
        self.with(|c| keys.iter().for_each(|k| drop(c.images.remove(k))));
        Ok(())
    }

    fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<(ImageRecord, f32)>> {
        let q = crate::vector::unit(query);
        if crate::vector::norm(&q) == 0.0 {
            return Ok(Vec::new());
        }
        Ok(self.with(|c| {
            let mut hits: Vec<(ImageRecord, f32)> = c
                .images
                .values()
                .map(|r| {
                    let cos: f32 = c.rows[r.row as usize].iter().zip(&q).map(|(a, b)| a * b).sum();
                    (r.clone(), crate::vector::distance(cos))
                })
                .collect();
            hits.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.key.cmp(&b.0.key)));
            hits.truncate(k);
            hits
        }))
    }
}
