#![allow(dead_code)] // each bench uses part of it
//! What the vector benches share: clustered synthetic vectors, timing of
//! one-thread queries, recall, percentiles and memory.

use std::time::Instant;

use imgsearch::index::VectorIndex;

pub fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

pub fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// `n` unit vectors around `clusters` random centres (like CNN embeddings of
/// a collection: many near-duplicates, clear groups).
pub fn clustered(n: usize, dim: usize, clusters: usize, rng: &mut Rng) -> Vec<f32> {
    let centers: Vec<f32> = (0..clusters * dim).map(|_| rng.next()).collect();
    let mut out = Vec::with_capacity(n * dim);
    let mut v = vec![0f32; dim];
    for i in 0..n {
        let c = &centers[(i * 7919 % clusters) * dim..][..dim];
        for (x, &m) in v.iter_mut().zip(c) {
            *x = m + 0.25 * rng.next();
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

pub fn time_queries(index: &dyn VectorIndex, queries: &[f32], dim: usize) -> (Vec<Vec<usize>>, Vec<f64>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let mut ids = Vec::new();
        let mut ms = Vec::new();
        for q in queries.chunks_exact(dim) {
            let t = Instant::now();
            let hits = index.search(q, 10);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            ids.push(hits.iter().map(|h| h.id).collect());
        }
        ms.sort_by(f64::total_cmp);
        (ids, ms)
    })
}

/// The queries: fresh points of the same clusters (not in the index), with a little noise.
pub fn queries(n_queries: usize, n: usize, dim: usize, rng: &mut Rng) -> Vec<f32> {
    let queries = clustered(n_queries, dim, (n / 100).max(10), &mut Rng(0x9E3779B97F4A7C15));
    queries
        .chunks_exact(dim)
        .flat_map(|q| {
            let noisy: Vec<f32> = q.iter().map(|x| x + 0.01 * rng.next()).collect();
            let norm = noisy.iter().map(|x| x * x).sum::<f32>().sqrt();
            noisy.into_iter().map(move |x| x / norm)
        })
        .collect()
}

/// Recall@10 of `found` against `truth`.
pub fn recall(truth: &[Vec<usize>], found: &[Vec<usize>]) -> f64 {
    let hits: usize = truth.iter().zip(found).map(|(t, f)| f.iter().filter(|id| t.contains(id)).count()).sum();
    hits as f64 / (truth.len() * 10) as f64
}
