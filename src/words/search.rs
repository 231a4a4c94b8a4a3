//! Nearest-word search: the exact vector index over the unit word vectors
//! (normalised once, when stored), reported as cosine distance.

use serde::Serialize;

use super::WordVectors;
use crate::index::{ExactIndex, VectorIndex};

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbour {
    /// Index in the vocabulary (GloVe: frequency rank).
    pub id: usize,
    pub word: String,
    /// Cosine distance, `1 - cos`.
    pub distance: f32,
}

impl WordVectors {
    /// The `k` words nearest to `query` (any scale), nearest first.
    pub fn nearest(&self, query: &[f32], k: usize) -> Vec<Neighbour> {
        assert_eq!(query.len(), self.dim(), "query dimension");
        ExactIndex::new(self.unit_vectors(), self.dim())
            .search(query, k)
            .into_iter()
            // The index reports angular distance d = sqrt(2 - 2cos): 1 - cos = d^2 / 2.
            .map(|h| Neighbour { id: h.id, word: self.word(h.id).to_owned(), distance: h.distance * h.distance / 2.0 })
            .collect()
    }
}
