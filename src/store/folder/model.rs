//! A folder store's trained model: `<db>/joint/model.safetensors`, its
//! checksum `model.sha256`, its description `model.json` and the training
//! report `report.json`, each replaced atomically.

use std::path::{Path, PathBuf};

use crate::files::write_atomic;
use crate::store::{NewModel, StoredModel};
use crate::{Error, Result};

/// The model directory inside a store directory.
pub fn model_dir(db: &Path) -> PathBuf {
    db.join("joint")
}

fn weights_path(dir: &Path) -> PathBuf {
    dir.join("model.safetensors")
}

fn info_path(dir: &Path) -> PathBuf {
    dir.join("model.json")
}

/// Whether a model has been trained for the store in `db`.
pub fn exists(db: &Path) -> bool {
    weights_path(&model_dir(db)).exists() && info_path(&model_dir(db)).exists()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// The model of the store in `db`, checked against its checksum; `None` when none was trained.
pub fn load(db: &Path) -> Result<Option<StoredModel>> {
    if !exists(db) {
        return Ok(None);
    }
    let dir = model_dir(db);
    let info_file = info_path(&dir);
    let info = std::fs::read_to_string(&info_file).map_err(|e| Error::io(&info_file, e))?;
    let weights = weights_path(&dir);
    let bytes = std::fs::read(&weights).map_err(|e| Error::io(&weights, e))?;
    // Models saved before checksums have no `model.sha256`.
    if let Ok(want) = std::fs::read_to_string(dir.join("model.sha256")) {
        if want.trim() != sha256_hex(&bytes) {
            return Err(Error::Store {
                path: weights,
                reason: "does not match its checksum (model.sha256): the model is damaged; \
                         retrain with `imgsearch train`"
                    .into(),
            });
        }
    }
    Ok(Some(StoredModel { id: 0, info, weights: bytes }))
}

/// Saves `model` into `<db>/joint/` (the caller holds the write lock).
pub fn save(db: &Path, model: &NewModel<'_>) -> Result<()> {
    let dir = model_dir(db);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // The checksum first: a crash between the two leaves a mismatch that says "retrain".
    write_atomic(&dir.join("model.sha256"), sha256_hex(model.weights).as_bytes())?;
    write_atomic(&weights_path(&dir), model.weights)?;
    write_atomic(&info_path(&dir), model.info.as_bytes())?;
    write_atomic(&dir.join("report.json"), model.report.as_bytes())
}
