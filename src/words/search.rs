//! Nearest-word search over the whole vocabulary:
//! a scan of an int8 copy of the unit vectors (a quarter of the memory
//! traffic of f32, and the scan is memory-bound) picks candidates, which are
//! re-ranked with the f32 vectors. Keeping 8x k candidates (at least 64)
//! makes missing a true neighbour a matter of int8 rounding (~1/127 per
//! component) between ranks far apart; the bench checks each query finds itself.
//!
//! Why not `index::ExactIndex`: on 50-d rows its 16-lane, parallel-fold scan
//! measured 1.4x slower than this single-threaded loop (`cargo bench --bench
//! words`, same machine, back to back), and f32 alone was 2x over budget.

use std::collections::BinaryHeap;

use serde::Serialize;

use super::WordVectors;
use crate::index::Worst as Scored;
use crate::simd::simd;

/// Candidates kept from the int8 scan per result asked for (and at least 64).
const OVERSAMPLE: usize = 8;

/// One search result, as the CLI (`words --json`) and the API both give it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Neighbour {
    /// Index in the vocabulary (GloVe: frequency rank).
    #[serde(skip)]
    pub id: usize,
    pub word: String,
    /// Distance, `sqrt(2 - 2 cos)` ([`crate::vector::distance`]).
    pub distance: f32,
}

/// Unit vectors as int8 with one scale per row: `v ~ codes * scale`.
pub(super) struct Quantized {
    codes: Vec<i8>,
    scales: Vec<f32>,
}

impl Quantized {
    pub(super) fn new(unit: &[f32], dim: usize) -> Self {
        let mut codes = Vec::with_capacity(unit.len());
        let mut scales = Vec::with_capacity(unit.len() / dim);
        for row in unit.chunks_exact(dim) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales.push(scale);
            codes.extend(row.iter().map(|v| (v / scale).round() as i8));
        }
        Self { codes, scales }
    }
}

fn keep(heap: &mut BinaryHeap<Scored>, k: usize, s: f32, id: usize) {
    if heap.len() < k {
        heap.push(Scored(s, id));
    } else if s > heap.peek().map_or(f32::NEG_INFINITY, |w| w.0) {
        heap.pop();
        heap.push(Scored(s, id));
    }
}

impl WordVectors {
    /// The `k` words nearest to `query` (any scale), nearest first.
    pub fn nearest(&self, query: &[f32], k: usize) -> Vec<Neighbour> {
        assert_eq!(query.len(), self.dim(), "query dimension");
        let q = crate::vector::unit(query);
        if k == 0 || crate::vector::norm(&q) == 0.0 || self.is_empty() {
            return Vec::new();
        }
        let dim = self.dim();
        let quantized = self.quantized();
        // 1. Candidates from the int8 copy.
        let n_candidates = (k * OVERSAMPLE).max(64);
        let mut candidates: BinaryHeap<Scored> = BinaryHeap::with_capacity(n_candidates + 1);
        let mut sims = vec![0f32; 4096];
        for (block, codes) in quantized.codes.chunks(4096 * dim).enumerate() {
            let n = codes.len() / dim;
            let scales = &quantized.scales[block * 4096..block * 4096 + n];
            simd(
                #[inline(always)]
                || dots_i8(codes, scales, &q, &mut sims[..n]),
            );
            for (i, &s) in sims[..n].iter().enumerate() {
                keep(&mut candidates, n_candidates, s, block * 4096 + i);
            }
        }
        // 2. Exact re-ranking in f32.
        let mut best: BinaryHeap<Scored> = BinaryHeap::with_capacity(k + 1);
        for Scored(_, id) in candidates.into_vec() {
            let s: f32 = self.unit(id).iter().zip(&q).map(|(a, b)| a * b).sum();
            keep(&mut best, k, s, id);
        }
        let mut best = best.into_vec();
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        best.into_iter()
            .map(|Scored(s, id)| Neighbour { id, word: self.word(id).to_owned(), distance: crate::vector::distance(s) })
            .collect()
    }
}

#[inline(always)]
fn dots_i8(codes: &[i8], scales: &[f32], q: &[f32], out: &mut [f32]) {
    let dim = q.len();
    for ((o, row), &scale) in out.iter_mut().zip(codes.chunks_exact(dim)).zip(scales) {
        // Eight partial sums so the loop vectorises without reassociation.
        let mut acc = [0f32; 8];
        let mut rc = row.chunks_exact(8);
        let mut qc = q.chunks_exact(8);
        for (r, qq) in (&mut rc).zip(&mut qc) {
            for i in 0..8 {
                acc[i] += r[i] as f32 * qq[i];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (r, qq) in rc.remainder().iter().zip(qc.remainder()) {
            s += *r as f32 * qq;
        }
        *o = s * scale;
    }
}
