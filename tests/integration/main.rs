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

/// The Pascal Sentences photos: `$IMGSEARCH_TEST_DATA`, else the shared data
/// set beside the project. Tests that need them are `#[ignore]`d by default
/// (a user's machine does not have them); CI runs them with `--ignored`.
pub fn pascal_images() -> PathBuf {
    let dir = match std::env::var_os("IMGSEARCH_TEST_DATA") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/pascal-sentences/images"),
    };
    assert!(
        dir.join("cat").is_dir(),
        "{}: the Pascal photos (label folders) are not there; set IMGSEARCH_TEST_DATA to them",
        dir.display()
    );
    dir
}

pub fn test_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// The Lite0 embedder (needs models).
pub fn lite0() -> Embedder {
    let config = Config::lite0();
    let weights = imgsearch::models::backbone_weights(&imgsearch::models::models_dir(None), config.kind);
    assert!(
        weights.exists(),
        "{} missing: run `imgsearch models fetch` (or set IMGSEARCH_MODELS) before the tests",
        weights.display()
    );
    Embedder::load(&weights, config).expect("Lite0 loads")
}

/// The Lite0 embedder as `imgsearch serve` and `index` run it: the
/// default precision, `auto` (bf16 on AMX tiles where the CPU has them).
pub fn lite0_as_served() -> Embedder {
    lite0().with_precision(imgsearch::backbone::Precision::Auto)
}
