//! An in-memory store: nothing touches the disk. For tests (the shared
//! store suite runs it beside the folder store and PostgreSQL) and for
//! throwaway collections.
//!
//! A [`MemoryPlace`] stands where a folder or a database would: handles
//! opened on one place share its images, as two processes share a store,
//! and the place remembers which backbone filled it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use std::collections::HashMap;

use super::{
    Filter, ImageRecord, ImageStore, NewImage, NewModel, NewVector, Projection, SavedModel, StoreQuery, StoredModel,
    TextSide,
};
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
    /// Each text side's vectors by content hash, with the projection's fingerprint.
    text: HashMap<String, SideVectors>,
    /// Trained models, oldest first (the last is current).
    models: Vec<StoredModel>,
    /// Uploaded originals by content hash.
    blobs: HashMap<String, Vec<u8>>,
}

/// One text side's vectors: the projection's fingerprint, and a vector per content hash.
type SideVectors = ([u8; 16], HashMap<String, Vec<f32>>);

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
                    text: HashMap::new(),
                    models: Vec::new(),
                    blobs: HashMap::new(),
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
                    meta: image.meta.clone(),
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

    fn update_meta(&mut self, facts: &[(i64, crate::metadata::PhotoMeta)]) -> Result<()> {
        self.with(|c| {
            for (key, meta) in facts {
                if let Some(r) = c.images.get_mut(key) {
                    r.meta = meta.clone();
                }
            }
        });
        Ok(())
    }

    fn delete(&mut self, keys: &[i64]) -> Result<()> {
        self.with(|c| keys.iter().for_each(|k| drop(c.images.remove(k))));
        Ok(())
    }

    fn search(&self, query: &StoreQuery<'_>, want: usize, filter: &Filter) -> Result<Vec<(ImageRecord, f32)>> {
        // A plain scan: every image's vector in the query's space against it.
        let (q, weights, text) = match query {
            StoreQuery::Cnn(q) => (crate::vector::unit(q), None, None),
            StoreQuery::Weighted { embedding, weights } => {
                let qw: Vec<f32> = embedding.iter().zip(*weights).map(|(a, w)| a * w).collect();
                (crate::vector::unit(&qw), Some(*weights), None)
            }
            StoreQuery::Text { side, vector } => {
                self.sync_text_side(side, None)?;
                (crate::vector::unit(vector), None, Some(side.name))
            }
        };
        if crate::vector::norm(&q) == 0.0 {
            return Ok(Vec::new());
        }
        Ok(self.with(|c| {
            let vector_of = |r: &ImageRecord| -> Vec<f32> {
                match (weights, text) {
                    (Some(w), _) => crate::vector::unit(
                        &c.rows[r.row as usize].iter().zip(w).map(|(a, w)| a * w).collect::<Vec<_>>(),
                    ),
                    (_, Some(side)) => c.text[side].1[&r.hash].clone(),
                    _ => c.rows[r.row as usize].clone(),
                }
            };
            let mut hits: Vec<(ImageRecord, f32)> = c
                .images
                .values()
                .filter(|r| filter.matches(r))
                .map(|r| {
                    let cos: f32 = vector_of(r).iter().zip(&q).map(|(a, b)| a * b).sum();
                    (r.clone(), crate::vector::distance(cos))
                })
                .collect();
            hits.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.key.cmp(&b.0.key)));
            hits.truncate(want);
            hits
        }))
    }

    fn sync_text_side(&self, side: &TextSide<'_>, _hashes: Option<&[String]>) -> Result<usize> {
        let fingerprint = side.projection.fingerprint();
        // The contents without a vector on this side (all, after the projection changed).
        let missing: Vec<(String, Vec<f32>)> = self.with(|c| {
            let current = c.text.get(side.name).filter(|(f, _)| *f == fingerprint);
            let mut seen = std::collections::HashSet::new();
            c.images
                .values()
                .filter(|r| current.is_none_or(|(_, v)| !v.contains_key(&r.hash)) && seen.insert(r.hash.clone()))
                .map(|r| (r.hash.clone(), c.rows[r.row as usize].iter().map(|v| v * r.norm).collect()))
                .collect()
        });
        let raw: Vec<f32> = missing.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        let projected = if missing.is_empty() { Vec::new() } else { side.projection.project(&raw)? };
        let out_dim = side.projection.out_dim();
        self.with(|c| {
            let entry = c.text.entry(side.name.to_owned()).or_insert_with(|| (fingerprint, Default::default()));
            if entry.0 != fingerprint {
                *entry = (fingerprint, Default::default());
            }
            for ((hash, _), v) in missing.iter().zip(projected.chunks_exact(out_dim.max(1))) {
                entry.1.insert(hash.clone(), crate::vector::unit(v));
            }
        });
        Ok(missing.len())
    }

    fn text_side_len(&self, side: &TextSide<'_>) -> Result<usize> {
        self.sync_text_side(side, None)?;
        Ok(self.with(|c| c.images.values().filter(|r| c.text[side.name].1.contains_key(&r.hash)).count()))
    }

    fn model_id(&self) -> Result<Option<i64>> {
        Ok(self.with(|c| c.models.last().map(|m| m.id)))
    }

    fn model(&self) -> Result<Option<StoredModel>> {
        Ok(self.with(|c| c.models.last().cloned()))
    }

    fn save_model(&self, model: &NewModel<'_>, projection: &dyn Projection) -> Result<SavedModel> {
        let id = self.with(|c| {
            let id = c.models.len() as i64 + 1;
            c.models.push(StoredModel { id, info: model.info.to_owned(), weights: model.weights.to_vec() });
            id
        });
        let rows = self.text_side_len(&TextSide { name: "trained", model_id: Some(id), projection })?;
        Ok(SavedModel { id, rows, location: format!("memory (model {id})") })
    }

    fn add_upload(&mut self, image: &NewImage, bytes: &[u8]) -> Result<i64> {
        let key = self.add_batch(std::slice::from_ref(image))?[0];
        self.with(|c| c.blobs.insert(image.hash.clone(), bytes.to_vec()));
        Ok(key)
    }

    fn keeps_uploads(&self) -> bool {
        true
    }

    fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.with(|c| c.blobs.get(hash).cloned()))
    }
}
