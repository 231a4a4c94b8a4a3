//! Approximate search: HNSW (Malkov & Yashunin, "Efficient and robust
//! approximate nearest neighbor search using Hierarchical Navigable Small
//! World graphs", 2016) from the `hnsw_rs` crate, persisted next to the store
//! and reloaded without a rebuild. Its distance is our vectorised dot product
//! on unit vectors (the crate's own `DistDot` is a scalar loop unless built
//! with an extra SIMD feature).

use std::path::Path;

use hnsw_rs::prelude::*;

use super::{angular, dot, Hit, VectorIndex};
use crate::simd::simd;
use crate::{Error, Result};

/// File base name of the dumped graph and data (`hnsw.hnsw.graph`, `hnsw.hnsw.data`).
const BASENAME: &str = "hnsw";

/// `1 - dot` of unit vectors.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnitDot;

impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - simd(
            #[inline(always)]
            || dot(a, b),
        ))
        .max(0.0)
    }
}

/// Graph parameters.
#[derive(Debug, Clone, Copy)]
pub struct HnswParams {
    /// Links per node (M).
    pub m: usize,
    pub ef_construction: usize,
    /// Candidate list size at query time (raised to k when smaller).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self { m: 16, ef_construction: 100, ef_search: 64 }
    }
}

/// The query-time candidate list for a graph of `n` vectors. Measured on
/// clustered 1280-d vectors (`cargo bench --bench index`): ef 64 gives
/// recall@10 0.965 at 100k but 0.60 at 1M, where ef 512 gives 0.944.
pub fn ef_search_for(n: usize) -> usize {
    match n {
        0..=150_000 => 64,
        150_001..=400_000 => 128,
        400_001..=700_000 => 256,
        _ => 512,
    }
}

/// An HNSW graph over the rows of a vector set; ids are row numbers.
pub struct HnswIndex {
    hnsw: Hnsw<'static, f32, UnitDot>,
    len: usize,
    ef_search: usize,
}

impl HnswIndex {
    /// Builds the graph over `vectors` (`[n, dim]`, unit rows), inserting in parallel.
    pub fn build(vectors: &[f32], dim: usize, params: HnswParams) -> Self {
        let n = vectors.len() / dim;
        let hnsw = Hnsw::new(params.m, n.max(1), 16, params.ef_construction, UnitDot);
        let mut index = Self { hnsw, len: 0, ef_search: params.ef_search.max(ef_search_for(n)) };
        index.insert_rows(vectors, dim, 0);
        index
    }

    /// Inserts rows `from..` of `vectors` (rows before `from` are already in).
    pub fn insert_rows(&mut self, vectors: &[f32], dim: usize, from: usize) {
        let rows: Vec<(&[f32], usize)> = vectors.chunks_exact(dim).enumerate().skip(from).map(|(i, r)| (r, i)).collect();
        self.hnsw.set_searching_mode(false);
        self.hnsw.parallel_insert_slice(&rows);
        self.hnsw.set_searching_mode(true);
        self.len = vectors.len() / dim;
    }

    pub fn set_ef_search(&mut self, ef: usize) {
        self.ef_search = ef;
    }

    /// Writes the graph and its data into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.hnsw
            .file_dump(dir, BASENAME)
            .map_err(|e| Error::Store { path: dir.join(BASENAME), reason: format!("cannot save the HNSW index: {e}") })?;
        Ok(())
    }

    /// Whether `dir` holds a saved graph.
    pub fn exists(dir: &Path) -> bool {
        dir.join(format!("{BASENAME}.hnsw.graph")).exists() && dir.join(format!("{BASENAME}.hnsw.data")).exists()
    }

    /// Loads a graph saved by [`save`](Self::save).
    pub fn load(dir: &Path, params: HnswParams) -> Result<Self> {
        // The loaded graph borrows its loader; the loader is a few bytes and
        // lives as long as the process needs the index, so it is leaked.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
        let hnsw: Hnsw<'static, f32, UnitDot> = io
            .load_hnsw()
            .map_err(|e| Error::Store { path: dir.join(BASENAME), reason: format!("cannot load the HNSW index: {e}; delete hnsw.* to rebuild it") })?;
        let len = hnsw.get_nb_point();
        Ok(Self { hnsw, len, ef_search: params.ef_search.max(ef_search_for(len)) })
    }
}

impl VectorIndex for HnswIndex {
    fn len(&self) -> usize {
        self.len
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let norm = query.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm == 0.0 || k == 0 || self.len == 0 {
            return Vec::new();
        }
        let q: Vec<f32> = query.iter().map(|v| v / norm).collect();
        let mut hits: Vec<Hit> = self
            .hnsw
            .search(&q, k, self.ef_search.max(k))
            .into_iter()
            .map(|n| Hit { id: n.d_id, distance: angular(1.0 - n.distance) })
            .collect();
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        hits
    }
}
