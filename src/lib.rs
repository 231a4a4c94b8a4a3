//! imgsearch: self-hosted semantic image search.
//!
//! Data flows: [`models`] fetches and converts pretrained weights once;
//! [`backbone`] decodes images and turns them into CNN embeddings and ImageNet
//! logits; [`indexer`] walks folders and writes new embeddings to the
//! [`store`]; [`index`] searches them; [`words`] loads word vectors and finds
//! nearest words; [`joint`] trains and applies the image-to-word model; [`eval`] holds the metrics quality figures come from;
//! [`cli`] wires it to the command line.

pub mod backbone;
pub mod cli;
pub mod dense;
pub mod duplicates;
pub mod error;
pub mod eval;
pub mod files;
pub mod index;
pub mod indexer;
pub mod joint;
pub mod library;
pub mod metadata;
pub mod metrics;
pub mod models;
pub mod query;
pub mod server;
mod simd;
pub mod spelling;
pub mod store;
pub mod text;
pub mod vector;
pub mod words;

pub use error::{Error, Result};

/// Uniform values in `[-0.5, 0.5)` from an xorshift seeded with `seed`:
/// the unit tests' deterministic data.
#[cfg(test)]
pub(crate) fn test_uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}
