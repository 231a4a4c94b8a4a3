//! Vector search over unit-length embeddings.
//!
//! [`VectorIndex`] is the seam; [`ExactIndex`] scans every vector (in
//! parallel, vectorised) and is the ground truth that anything approximate
//! is measured against; [`HnswIndex`] is the approximate one, used above
//! [`HNSW_MIN_ROWS`]. Distance is angular, as Annoy reports it:
//! `sqrt(2 - 2 cos)`, 0 for the same direction, 2 for opposite.

mod hnsw;

pub use hnsw::{ef_search_for, HnswIndex, HnswParams, Reranked};

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::simd::simd;

/// Stores with at least this many vectors are searched through HNSW (below
/// it an exact scan takes a few milliseconds). `IMGSEARCH_HNSW_MIN_ROWS`
/// overrides it (tests use a small value).
pub const HNSW_MIN_ROWS: usize = 20_000;

/// [`HNSW_MIN_ROWS`], or its override from the environment.
pub fn hnsw_min_rows() -> usize {
    std::env::var("IMGSEARCH_HNSW_MIN_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(HNSW_MIN_ROWS)
}

/// One result: the position of a vector in the index and its distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: usize,
    pub distance: f32,
}

/// Angular distance from a cosine similarity (the one definition: [`crate::vector::distance`]).
pub use crate::vector::distance as angular;

/// Nearest-neighbour search over a fixed set of unit vectors.
pub trait VectorIndex: Send + Sync {
    /// Number of vectors.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k` nearest vectors to `query` (any length), nearest first.
    fn search(&self, query: &[f32], k: usize) -> Vec<Hit>;
}

/// Exact search: scores every vector.
pub struct ExactIndex<'a> {
    vectors: &'a [f32],
    dim: usize,
}

impl<'a> ExactIndex<'a> {
    /// `vectors` is row-major `[n, dim]`, each row unit length (normalised once, when stored).
    pub fn new(vectors: &'a [f32], dim: usize) -> Self {
        assert_eq!(vectors.len() % dim, 0, "vectors are not [n, {dim}]");
        Self { vectors, dim }
    }

    /// Class-weighted search: the query and every vector are multiplied by
    /// `weights` (one ImageNet class's classifier row) before the cosine.
    pub fn search_weighted(&self, query: &[f32], weights: &[f32], k: usize) -> Vec<Hit> {
        assert_eq!(weights.len(), self.dim);
        // cos(q*w, v*w) = sum(q w^2 v) / (|q*w| |v*w|): one pass over the vectors.
        let qw2: Vec<f32> = query.iter().zip(weights).map(|(q, w)| q * w * w).collect();
        let q_norm = query.iter().zip(weights).map(|(q, w)| (q * w) * (q * w)).sum::<f32>().sqrt();
        let w2: Vec<f32> = weights.iter().map(|w| w * w).collect();
        if q_norm == 0.0 {
            return Vec::new();
        }
        self.top_k(k, |rows, out| {
            simd(
                #[inline(always)]
                || {
                    for (o, v) in out.iter_mut().zip(rows.chunks_exact(self.dim)) {
                        let (dot, vv) = dot_and_weighted_norm(v, &qw2, &w2);
                        *o = if vv > 0.0 { dot / (q_norm * vv.sqrt()) } else { -1.0 };
                    }
                },
            )
        })
    }

    /// The `k` nearest to `query` among `rows` only (a filtered search:
    /// the cost follows `rows.len()`, not the whole set).
    pub fn search_among(&self, query: &[f32], rows: &[usize], k: usize) -> Vec<Hit> {
        let q = crate::vector::unit(query);
        if crate::vector::norm(&q) == 0.0 {
            return Vec::new();
        }
        self.top_k_among(rows, k, |v| dot(v, &q))
    }

    /// [`ExactIndex::search_weighted`] among `rows` only.
    pub fn search_weighted_among(&self, query: &[f32], weights: &[f32], rows: &[usize], k: usize) -> Vec<Hit> {
        let qw2: Vec<f32> = query.iter().zip(weights).map(|(q, w)| q * w * w).collect();
        let q_norm = query.iter().zip(weights).map(|(q, w)| (q * w) * (q * w)).sum::<f32>().sqrt();
        let w2: Vec<f32> = weights.iter().map(|w| w * w).collect();
        if q_norm == 0.0 {
            return Vec::new();
        }
        self.top_k_among(rows, k, |v| {
            let (dot, vv) = dot_and_weighted_norm(v, &qw2, &w2);
            if vv > 0.0 {
                dot / (q_norm * vv.sqrt())
            } else {
                -1.0
            }
        })
    }

    /// The top `k` of `rows` by `score` (a cosine; NaN ranks last).
    fn top_k_among(&self, rows: &[usize], k: usize, score: impl Fn(&[f32]) -> f32 + Sync) -> Vec<Hit> {
        let n = self.vectors.len() / self.dim;
        let mut scored: Vec<Worst> = simd(
            #[inline(always)]
            || {
                rows.par_iter()
                    .filter(|&&r| r < n)
                    .map(|&r| {
                        let s = score(&self.vectors[r * self.dim..(r + 1) * self.dim]);
                        Worst(if s.is_nan() { f32::NEG_INFINITY } else { s }, r)
                    })
                    .collect()
            },
        );
        // `Worst` orders the most similar first.
        if scored.len() > k && k > 0 {
            scored.select_nth_unstable(k - 1);
            scored.truncate(k);
        }
        scored.sort();
        scored.truncate(k);
        scored.into_iter().map(|Worst(s, id)| Hit { id, distance: angular(s) }).collect()
    }

    /// Scores rows in parallel chunks with `score(rows, out)` (cosines) and keeps the top `k`.
    fn top_k(&self, k: usize, score: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<Hit> {
        const CHUNK: usize = 2048;
        let n = self.vectors.len() / self.dim;
        if k == 0 || n == 0 {
            return Vec::new();
        }
        let best = self
            .vectors
            .par_chunks(CHUNK * self.dim)
            .enumerate()
            .fold(
                || (BinaryHeap::<Worst>::with_capacity(k + 1), vec![0f32; CHUNK]),
                |(mut heap, mut sims), (chunk, rows)| {
                    let m = rows.len() / self.dim;
                    score(rows, &mut sims[..m]);
                    for (i, &s) in sims[..m].iter().enumerate() {
                        // NaN (a damaged row) ranks last, not first.
                        let s = if s.is_nan() { f32::NEG_INFINITY } else { s };
                        if heap.len() < k {
                            heap.push(Worst(s, chunk * CHUNK + i));
                        } else if s > heap.peek().unwrap().0 {
                            heap.pop();
                            heap.push(Worst(s, chunk * CHUNK + i));
                        }
                    }
                    (heap, sims)
                },
            )
            .map(|(heap, _)| heap.into_vec())
            .reduce(Vec::new, |mut a, b| {
                a.extend(b);
                a
            });
        let mut best = best;
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        best.truncate(k);
        best.into_iter().map(|Worst(s, id)| Hit { id, distance: angular(s) }).collect()
    }
}

impl VectorIndex for ExactIndex<'_> {
    fn len(&self) -> usize {
        self.vectors.len() / self.dim
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        assert_eq!(query.len(), self.dim, "query dimension");
        let q = crate::vector::unit(query);
        if crate::vector::norm(&q) == 0.0 {
            return Vec::new();
        }
        self.top_k(k, |rows, out| {
            simd(
                #[inline(always)]
                || {
                    for (o, v) in out.iter_mut().zip(rows.chunks_exact(self.dim)) {
                        *o = dot(v, &q);
                    }
                },
            )
        })
    }
}

/// A `(similarity, id)` heap entry whose maximum is the worst kept similarity,
/// so a `BinaryHeap` of them keeps the best k.
#[derive(PartialEq)]
pub(crate) struct Worst(pub(crate) f32, pub(crate) usize);
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot_and_weighted_norm(v: &[f32], qw2: &[f32], w2: &[f32]) -> (f32, f32) {
    let mut d = [0f32; 16];
    let mut n = [0f32; 16];
    let (vc, qc, wc) = (v.chunks_exact(16), qw2.chunks_exact(16), w2.chunks_exact(16));
    let (mut td, mut tn) = (0f32, 0f32);
    for ((x, q), w) in vc.remainder().iter().zip(qc.remainder()).zip(wc.remainder()) {
        td += x * q;
        tn += x * x * w;
    }
    for ((x, q), w) in vc.zip(qc).zip(wc) {
        for i in 0..16 {
            d[i] += x[i] * q[i];
            n[i] += x[i] * x[i] * w[i];
        }
    }
    (d.iter().sum::<f32>() + td, n.iter().sum::<f32>() + tn)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::vector::unit;

    #[test]
    fn exact_search_orders_by_angular_distance() {
        let vectors: Vec<f32> = [unit(&[1.0, 0.0]), unit(&[0.0, 1.0]), unit(&[1.0, 1.0]), unit(&[-1.0, 0.0])].concat();
        let idx = ExactIndex::new(&vectors, 2);
        let hits = idx.search(&[2.0, 0.1], 4);
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [0, 2, 1, 3]);
        assert!(hits[0].distance < 0.06);
        assert!((hits[3].distance - 2.0).abs() < 0.01, "opposite is distance 2");
        assert!((angular(0.0) - 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn top_k_is_right_across_parallel_chunks() {
        // 5000 vectors in a circle: the nearest to angle 0 are ids 0, 1, 4999, 2, 4998...
        let n = 5000;
        let vectors: Vec<f32> = (0..n)
            .flat_map(|i| {
                let a = i as f32 / n as f32 * std::f32::consts::TAU;
                [a.cos(), a.sin()]
            })
            .collect();
        let hits = ExactIndex::new(&vectors, 2).search(&[1.0, 0.0], 5);
        let mut ids: Vec<usize> = hits.iter().map(|h| h.id).collect();
        ids.sort();
        assert_eq!(ids, [0, 1, 2, 4998, 4999]);
        assert_eq!(hits[0].id, 0);
    }

    /// Clustered unit vectors, deterministic (the graph's own tests use them too).
    pub(super) fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
        let mut rnd = crate::test_uniform(seed);
        let centers: Vec<f32> = (0..clusters * dim).map(|_| rnd()).collect();
        (0..n)
            .flat_map(|i| {
                let c = &centers[(i % clusters) * dim..][..dim];
                let v: Vec<f32> = c.iter().map(|x| x + 0.3 * rnd()).collect();
                unit(&v)
            })
            .collect()
    }

    /// The same behaviour asked of every index implementation.
    fn shared_suite(index: &dyn VectorIndex, vectors: &[f32], dim: usize) {
        let n = vectors.len() / dim;
        assert_eq!(index.len(), n);
        for probe in [0, n / 3, n - 1] {
            let row = &vectors[probe * dim..(probe + 1) * dim];
            let hits = index.search(row, 5);
            assert_eq!(hits.len(), 5);
            assert_eq!(hits[0].id, probe, "a stored vector finds itself first");
            assert!(hits[0].distance < 1e-3);
            assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance), "nearest first");
        }
        assert!(index.search(&vec![0.0; dim], 5).is_empty(), "a zero query has no direction");
        assert!(index.search(&vectors[..dim], 0).is_empty());
    }

    #[test]
    fn exact_index_passes_the_shared_suite() {
        let v = clustered(3000, 32, 20, 7);
        shared_suite(&ExactIndex::new(&v, 32), &v, 32);
    }

    #[test]
    fn hnsw_index_passes_the_shared_suite_and_agrees_with_exact() {
        let dim = 32;
        let v = clustered(3000, dim, 20, 11);
        let mut hnsw = HnswIndex::build(&v, dim, HnswParams::default());
        shared_suite(&hnsw.over(&v, dim), &v, dim);
        // Insertion order across threads varies, so the graph does: ask for a
        // comfortable candidate list so the bar holds run after run.
        hnsw.set_ef_search(200);
        let exact = ExactIndex::new(&v, dim);
        let queries = clustered(50, dim, 20, 99);
        let mut found = 0;
        for q in queries.chunks_exact(dim) {
            let truth: Vec<usize> = exact.search(q, 10).iter().map(|h| h.id).collect();
            found += hnsw.over(&v, dim).search(q, 10).iter().filter(|h| truth.contains(&h.id)).count();
        }
        let recall = found as f64 / 500.0;
        assert!(recall >= 0.97, "recall@10 against exact: {recall}");
    }

    /// Regression: a damaged (NaN) vector ranked first at distance 0.
    #[test]
    fn a_nan_vector_ranks_last() {
        let mut v = [unit(&[1.0, 0.0]), unit(&[0.8, 0.6])].concat();
        v.extend([f32::NAN, 0.0]);
        let hits = ExactIndex::new(&v, 2).search(&[1.0, 0.0], 3);
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(hits[2].distance.is_infinite(), "{hits:?}");
        assert!(angular(f32::NAN).is_infinite());
    }

    #[test]
    fn hnsw_index_survives_save_and_load() {
        let dim = 16;
        let v = clustered(500, dim, 10, 3);
        let dir = tempfile::tempdir().unwrap();
        let built = HnswIndex::build(&v, dim, HnswParams::default());
        built.save(dir.path()).unwrap();
        assert!(HnswIndex::exists(dir.path()));
        let loaded = HnswIndex::load(dir.path(), HnswParams::default()).unwrap();
        let q = &v[42 * dim..43 * dim];
        assert_eq!(loaded.over(&v, dim).search(q, 5), built.over(&v, dim).search(q, 5));
        shared_suite(&loaded.over(&v, dim), &v, dim);
    }

    #[test]
    fn class_weights_change_what_is_near() {
        // Without weights b is nearer; weighting dim 1 heavily makes c nearer.
        let vectors: Vec<f32> = [unit(&[1.0, 0.0, 0.1]), unit(&[0.8, 0.6, 0.0]), unit(&[0.0, 0.5, 1.0])].concat();
        let idx = ExactIndex::new(&vectors, 3);
        let q = unit(&[0.9, 0.4, 0.2]);
        assert_eq!(idx.search(&q, 1)[0].id, 1);
        let w = [0.01, 0.01, 10.0];
        assert_eq!(idx.search_weighted(&q, &w, 1)[0].id, 2);
        // Uniform weights change nothing.
        let ones = [1.0, 1.0, 1.0];
        let a: Vec<usize> = idx.search(&q, 3).iter().map(|h| h.id).collect();
        let b: Vec<usize> = idx.search_weighted(&q, &ones, 3).iter().map(|h| h.id).collect();
        assert_eq!(a, b);
    }
}
