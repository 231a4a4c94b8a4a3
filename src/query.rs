//! Running a search over the store: the query vector (CNN space, class
//! weighted, or joint space), the index to scan, and the results with their
//! records. Shared by the CLI and the HTTP service.

use serde::Serialize;

use crate::index::{ExactIndex, HnswIndex, VectorIndex};
use crate::joint::vectors::JointVectors;
use crate::store::ImageStore;
use crate::Result;

/// What to search with.
#[derive(Debug, Clone)]
pub enum Query {
    /// A CNN embedding (any length: the cosine ignores it).
    Cnn(Vec<f32>),
    /// A CNN embedding, with the query and every stored vector multiplied
    /// by these weights (one ImageNet class's classifier row).
    Weighted { embedding: Vec<f32>, weights: Vec<f32> },
    /// A vector in the joint image-word space.
    Joint(Vec<f32>),
}

/// One result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Found {
    pub rank: usize,
    pub key: i64,
    pub path: String,
    pub label: String,
    /// Angular distance `sqrt(2 - 2 cos)`: 0 same direction, 2 opposite.
    pub distance: f32,
}

/// Where the vectors are.
pub struct Indexes<'a> {
    pub store: &'a dyn ImageStore,
    /// The HNSW graph over the CNN embeddings, when it covers every row.
    pub hnsw: Option<&'a HnswIndex>,
    pub joint: Option<&'a JointVectors>,
    /// The database's id of the joint model the query was made with (trained side).
    pub joint_model: Option<i64>,
    /// The database's rows of another text side (zero-shot, fused), by projection fingerprint.
    pub text_fingerprint: Option<String>,
}

/// The `k` nearest images to `query`, nearest first, farther than
/// `max_distance` dropped. Rows no image uses any more are skipped.
pub fn search(ix: &Indexes<'_>, query: &Query, k: usize, max_distance: Option<f32>) -> Result<Vec<Found>> {
    let Some(store) = ix.store.as_embedded() else {
        return search_database(ix, query, k, max_distance);
    };
    let (vectors, dim) = match query {
        Query::Joint(_) => {
            let j = ix.joint.ok_or_else(|| crate::Error::NoModel { db: store.dir().to_path_buf() })?;
            (j.vectors(), j.dim())
        }
        _ => (store.vectors(), store.dim()),
    };
    let exact = ExactIndex::new(vectors, dim);
    let hnsw = match query {
        Query::Cnn(_) => ix.hnsw.filter(|h| h.len() == vectors.len() / dim),
        _ => None,
    };
    let reranked = hnsw.map(|h| h.over(vectors, dim));
    let index: &dyn VectorIndex = match &reranked {
        Some(h) => h,
        None => &exact,
    };
    // Widen until k results or the end (deleted images leave unused rows).
    let mut want = k + 8;
    let results = loop {
        let hits = match query {
            Query::Weighted { embedding, weights } => exact.search_weighted(embedding, weights, want),
            Query::Cnn(q) | Query::Joint(q) => index.search(q, want),
        };
        let rows: Vec<u64> = hits.iter().map(|h| h.id as u64).collect();
        let distance: std::collections::HashMap<u64, f32> = hits.iter().map(|h| (h.id as u64, h.distance)).collect();
        let out: Vec<Found> = store
            .by_rows(&rows)?
            .into_iter()
            .map(|r| Found { rank: 0, key: r.key, path: r.path, label: r.label, distance: distance[&r.row] })
            .collect();
        if out.len() >= k || hits.len() < want {
            break out;
        }
        want *= 4;
    };
    Ok(ranked(results.into_iter(), k, max_distance))
}

/// A search where the vectors are: in PostgreSQL (pgvector's HNSW indexes
/// for the CNN and joint spaces, an exact scan for class weights).
fn search_database(ix: &Indexes<'_>, query: &Query, k: usize, max_distance: Option<f32>) -> Result<Vec<Found>> {
    let store = ix.store;
    let hits = match (query, store.as_postgres()) {
        (Query::Cnn(q), _) => store.nearest(q, k)?,
        (Query::Joint(q), Some(pg)) => match (&ix.text_fingerprint, ix.joint_model) {
            (Some(fingerprint), _) => pg.nearest_text(fingerprint, q, k)?,
            (None, Some(model)) => pg.nearest_joint(model, q, k)?,
            (None, None) => return Err(crate::Error::NoModel { db: store.describe().into() }),
        },
        (Query::Weighted { embedding, weights }, Some(pg)) => pg.nearest_weighted(embedding, weights, k)?,
        _ => {
            return Err(crate::Error::Msg(format!(
                "class-weighted and joint-space search are not available on {}",
                store.describe()
            )))
        }
    };
    let results =
        hits.into_iter().map(|(r, distance)| Found { rank: 0, key: r.key, path: r.path, label: r.label, distance });
    Ok(ranked(results, k, max_distance))
}

/// The first `k` within `max_distance`, ranked from 1.
fn ranked(results: impl Iterator<Item = Found>, k: usize, max_distance: Option<f32>) -> Vec<Found> {
    results
        .filter(|r| max_distance.is_none_or(|m| r.distance <= m))
        .take(k)
        .enumerate()
        .map(|(i, r)| Found { rank: i + 1, ..r })
        .collect()
}

/// Unit length (zero stays zero).
pub fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n == 0.0 {
        v.to_vec()
    } else {
        v.iter().map(|x| x / n).collect()
    }
}
