//! The integration tests: one binary, one module per area.
//!
//! Tests marked "needs models" read the converted weights from
//! `$IMGSEARCH_MODELS` (or the default model directory) and fail with a
//! message saying to run `imgsearch models fetch` when they are missing.

mod bad_input;
mod checkpoint;
mod cli;
mod embed;
mod index;
mod joint;
mod server;
mod store;
mod text;
mod words;

use std::path::PathBuf;

use imgsearch::backbone::{Config, Embedder};

/// The shared Pascal Sentences data set, beside the project.
pub fn pascal_images() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/pascal-sentences/images")
}

pub fn test_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// The Lite0 embedder (needs models).
pub fn lite0() -> Embedder {
    let config = Config::lite0();
    let weights = imgsearch::models::backbone_weights(&imgsearch::models::models_dir(None), &config);
    assert!(
        weights.exists(),
        "{} missing: run `imgsearch models fetch` (or set IMGSEARCH_MODELS) before the tests",
        weights.display()
    );
    Embedder::load(&weights, config).expect("Lite0 loads")
}
