//! How a folder store searches: an exact scan, the HNSW graph once it covers
//! every row, and filters inside either.

use super::Store;
use crate::store::{Filter, ImageRecord, StoreQuery};
use crate::Result;

/// At most this many rows passing a filter are scored exactly; more go
/// through the HNSW graph.
const EXACT_FILTERED_ROWS: usize = 4096;

/// The most graph results a filtered search asks for before it scores the
/// rows that pass instead.
const MAX_WIDENED: usize = 1024;

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
                    // Many pass: the graph's nearest, widened by the share that
                    // passes, then filtered; a filter the nearest images do not
                    // pass (it follows the content) falls back to scoring the
                    // rows that pass, so recall never collapses.
                    (Some(g), Some(rows)) => {
                        let reranked = g.over(self.vectors(), self.dim);
                        let share = rows.len() as f64 / rows_total.max(1) as f64;
                        self.images_for_hits(want, filter, |w| {
                            let wide = (w as f64 / share * 2.0).ceil() as usize;
                            if wide <= MAX_WIDENED {
                                let mut hits = reranked.search(q, wide);
                                hits.retain(|h| rows.binary_search(&h.id).is_ok());
                                if hits.len() >= w {
                                    hits.truncate(w);
                                    return hits;
                                }
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
}
