//! How a folder store searches: an exact scan, the HNSW graph once it covers
//! every row, and filters inside either.

use super::Store;
use crate::index::{HnswIndex, HnswParams};
use crate::store::{Filter, ImageRecord, StoreQuery};
use crate::Result;

/// At most this many rows passing a filter are scored exactly in f32
/// (`cargo bench --bench filters`: cheaper than any walk); more through the
/// HNSW graph's int8 codes.
const EXACT_FILTERED_ROWS: usize = 1024;

impl Store {
    /// [`crate::store::ImageStore::search`] on a folder store: the exact scan, the HNSW
    /// graph once it covers every row, or, with a filter, the rows that pass.
    pub(super) fn search_rows(
        &self,
        query: &StoreQuery<'_>,
        want: usize,
        filter: &Filter,
    ) -> Result<Vec<(ImageRecord, f32)>> {
        use crate::index::{ExactIndex, VectorIndex};
        // A filter becomes the rows it lets through, searched inside the index.
        let among = if filter.is_empty() { None } else { Some(self.rows_matching(filter)?) };
        match query {
            StoreQuery::Weighted { embedding, weights } => {
                let exact = ExactIndex::new(self.vectors(), self.dim);
                self.images_for_hits(want, filter, |w| match &among {
                    Some(rows) => exact.search_weighted_among(embedding, weights, rows, w),
                    None => exact.search_weighted(embedding, weights, w),
                })
            }
            StoreQuery::Cnn(q) => {
                self.load_hnsw();
                let graph = self.hnsw.read().unwrap_or_else(|e| e.into_inner());
                let rows_total = self.rows as usize;
                let graph =
                    graph.as_ref().and_then(|g| g.as_ref()).filter(|g| g.len() == rows_total && !self.is_exact());
                let exact = ExactIndex::new(self.vectors(), self.dim);
                match (graph, &among) {
                    // Few rows pass: scoring them is cheaper than walking the graph.
                    (None, Some(rows)) => self.images_for_hits(want, filter, |w| exact.search_among(q, rows, w)),
                    (_, Some(rows)) if rows.len() <= EXACT_FILTERED_ROWS => {
                        self.images_for_hits(want, filter, |w| exact.search_among(q, rows, w))
                    }
                    // Up to a twentieth: a scan of their int8 codes is cheaper than a walk.
                    (Some(g), Some(rows)) if rows.len() <= rows_total / 20 => {
                        let reranked = g.over(self.vectors(), self.dim);
                        self.images_for_hits(want, filter, |w| reranked.search_among(q, rows, w))
                    }
                    // More pass: the graph walk keeps only rows that pass as
                    // results (walking through or stepping over the others;
                    // `cargo bench --bench filters`, 30k rows, round robin:
                    // a 10 % filter 0.38 ms walked, 0.68 ms scanned). When
                    // the walk ends with fewer than asked (the passing rows
                    // lie far from the query), the rows that pass are scored.
                    (Some(g), Some(rows)) => {
                        let reranked = g.over(self.vectors(), self.dim);
                        let mut passes = vec![0u64; rows_total.div_ceil(64)];
                        for &r in rows.iter() {
                            passes[r / 64] |= 1 << (r % 64);
                        }
                        let accept = |id: usize| passes.get(id / 64).is_some_and(|b| b >> (id % 64) & 1 == 1);
                        let share = rows.len() as f64 / rows_total.max(1) as f64;
                        self.images_for_hits(want, filter, |w| {
                            let hits = reranked.search_filtered(q, w, &accept, share);
                            if hits.len() >= w {
                                return hits;
                            }
                            exact.search_among(q, rows, w)
                        })
                    }
                    (Some(g), None) => {
                        let reranked = g.over(self.vectors(), self.dim);
                        self.images_for_hits(want, filter, |w| reranked.search(q, w))
                    }
                    (None, None) => self.images_for_hits(want, filter, |w| exact.search(q, w)),
                }
            }
            StoreQuery::Text { side, vector } => {
                let vectors = self.text_vectors(side)?;
                let exact = ExactIndex::new(vectors.vectors(), vectors.dim());
                self.images_for_hits(want, filter, |w| match &among {
                    Some(rows) => exact.search_among(vector, rows, w),
                    None => exact.search(vector, w),
                })
            }
        }
    }

    /// Near pairs from the graph's level-0 links: each row's links are its
    /// nearest neighbours as far as the diversity rule kept them, and the
    /// rule drops a neighbour only for a kept one nearer to both, so two
    /// rows within `max_distance` stay joined by a chain of links each
    /// within it. One pass over the links, scored in f32: no searches.
    /// A store without a graph (below its size) builds one for the pass.
    pub(super) fn near_pairs_in_graph(&self, max_distance: f32) -> Result<Vec<(i64, i64, f32)>> {
        use rayon::prelude::*;
        let (_, records) = self.cached_records()?;
        let mut by_row: std::collections::HashMap<u64, Vec<i64>> = std::collections::HashMap::new();
        for r in records.iter() {
            by_row.entry(r.row).or_default().push(r.key);
        }
        // Identical files share a row: distance 0.
        let mut pairs: Vec<(i64, i64, f32)> =
            by_row.values().flat_map(|keys| keys.windows(2).map(|w| (w[0], w[1], 0.0))).collect();
        self.load_hnsw();
        let stored = self.hnsw.read().unwrap_or_else(|e| e.into_inner());
        let rows = self.rows as usize;
        let built;
        let graph = match stored.as_ref().and_then(|g| g.as_ref()).filter(|g| g.len() == rows) {
            Some(g) => g,
            None => {
                // A store this small keeps no graph; one built here on one
                // thread links the same rows every time. Built in parallel,
                // copies inserted at the same moment could miss each other:
                // the Pascal eval's pair recall came out 0.940-0.970 from one
                // run to the next, and 0.970 in each of 3 runs on one thread.
                built = match rows <= crate::index::HNSW_MIN_ROWS {
                    true => HnswIndex::build_on_one_thread(self.vectors(), self.dim, HnswParams::default()),
                    false => HnswIndex::build(self.vectors(), self.dim, HnswParams::default()),
                };
                &built
            }
        };
        let vectors = self.vectors();
        let linked: Vec<(i64, i64, f32)> = (0..graph.len())
            .into_par_iter()
            .filter(|row| by_row.contains_key(&(*row as u64)))
            .flat_map_iter(|row| {
                let v = &vectors[row * self.dim..][..self.dim];
                let near: Vec<(i64, i64, f32)> = graph
                    .neighbours(row)
                    .into_iter()
                    .filter_map(|other| {
                        let keys = by_row.get(&(other as u64))?;
                        let d = crate::vector::distance(crate::index::dot(v, &vectors[other * self.dim..][..self.dim]));
                        (d <= max_distance).then(|| (by_row[&(row as u64)][0], keys[0], d))
                    })
                    .collect();
                near
            })
            .collect();
        pairs.extend(linked);
        Ok(pairs)
    }
}
