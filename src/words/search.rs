//! Exact nearest-word search: one pass of dot products over the unit vectors
//! (vectors were normalised once, when stored), keeping the top k.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::Serialize;

use super::WordVectors;
use crate::simd::simd;

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbour {
    /// Index in the vocabulary (GloVe: frequency rank).
    pub id: usize,
    pub word: String,
    /// Cosine distance, `1 - cos`.
    pub distance: f32,
}

/// Heap entry ordered so that the heap's top is the worst kept result.
#[derive(PartialEq)]
struct Scored(f32, usize);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        // Larger similarity is better: invert so the heap's max is the smallest similarity.
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

impl WordVectors {
    /// The `k` words nearest to `query` (any scale), nearest first.
    pub fn nearest(&self, query: &[f32], k: usize) -> Vec<Neighbour> {
        assert_eq!(query.len(), self.dim(), "query dimension");
        let norm = query.iter().map(|v| v * v).sum::<f32>().sqrt();
        if k == 0 || norm == 0.0 || self.is_empty() {
            return Vec::new();
        }
        let q: Vec<f32> = query.iter().map(|v| v / norm).collect();
        let dim = self.dim();
        let mut heap: BinaryHeap<Scored> = BinaryHeap::with_capacity(k + 1);
        let mut sims = vec![0f32; 4096];
        for (block, rows) in self.unit_vectors().chunks(4096 * dim).enumerate() {
            let n = rows.len() / dim;
            simd(
                #[inline(always)]
                || dots(rows, &q, &mut sims[..n]),
            );
            for (i, &s) in sims[..n].iter().enumerate() {
                if heap.len() < k {
                    heap.push(Scored(s, block * 4096 + i));
                } else if s > heap.peek().map_or(f32::NEG_INFINITY, |w| w.0) {
                    heap.pop();
                    heap.push(Scored(s, block * 4096 + i));
                }
            }
        }
        let mut best = heap.into_vec();
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        best.into_iter()
            .map(|Scored(s, id)| Neighbour { id, word: self.word(id).to_owned(), distance: (1.0 - s).max(0.0) })
            .collect()
    }
}

#[inline(always)]
fn dots(rows: &[f32], q: &[f32], out: &mut [f32]) {
    let dim = q.len();
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(dim)) {
        // Eight partial sums so the loop vectorises without reassociation.
        let mut acc = [0f32; 8];
        let mut chunks = row.chunks_exact(8);
        let mut qc = q.chunks_exact(8);
        for (r, qq) in (&mut chunks).zip(&mut qc) {
            for i in 0..8 {
                acc[i] += r[i] * qq[i];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (r, qq) in chunks.remainder().iter().zip(qc.remainder()) {
            s += r * qq;
        }
        *o = s;
    }
}
