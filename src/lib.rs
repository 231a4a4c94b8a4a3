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
