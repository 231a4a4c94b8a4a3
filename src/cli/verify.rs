//! `imgsearch verify`: check a store's checksums and derived files.

use super::*;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Backbone network of the index.
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
}

pub(super) fn verify(models_dir: &std::path::Path, db: &std::path::Path, a: VerifyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !crate::store::is_database(db),
        "verify checks a folder store; PostgreSQL checks its own pages (its data checksums, amcheck)"
    );
    // Opening checks SQLite's integrity, the vector file's header and length, and the row counts.
    let store = open_index(db, a.backbone)?;
    let crate::store::VerifyReport { checked, unchecked, damaged } = store.verify()?;
    let mut problems: Vec<String> = damaged
        .iter()
        .map(|(first, rows)| {
            format!("{}: rows {first}..{} do not match their checksum", db.join("vectors.f32").display(), first + rows)
        })
        .collect();
    println!(
        "vectors: {checked} rows checked, {} damaged, {unchecked} written before checksums (not checked)",
        damaged.len()
    );
    if crate::index::HnswIndex::exists(db) {
        match crate::index::HnswIndex::load(db, Default::default()) {
            Ok(h) => println!("HNSW graph: {} vectors, checksums match", h.len()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if crate::joint::exists(db) {
        match JointModel::load(db) {
            Ok(_) => println!("joint model: checksum matches"),
            Err(e) => problems.push(e.to_string()),
        }
    }
    // Each text side's image vectors are derived: checked by recomputing them.
    match text_space(models_dir, &store, db, a.backbone, None) {
        Ok(space) => {
            for side in space.sides() {
                let path = crate::joint::vectors::JointVectors::path_for(db, side);
                match crate::joint::vectors::JointVectors::damaged_rows(&store, &space.projection(side)?, &path)? {
                    None => {}
                    Some(rows) if rows.is_empty() => println!("{side} text vectors: {} rows recomputed, all match", store.rows()),
                    Some(rows) => problems.push(format!(
                        "{}: {} rows differ from a fresh projection (first: row {}); delete the file and it is recomputed",
                        path.display(),
                        rows.len(),
                        rows[0]
                    )),
                }
            }
        }
        Err(e) => println!("text vectors: not checked ({e})"),
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("damaged: {p}");
        }
        bail!(
            "{} problems found; the HNSW graph is rebuilt by `imgsearch index`, a model by `imgsearch train`; \
             damaged vector rows need the store moved aside and `imgsearch index` run again",
            problems.len()
        );
    }
    println!("{}: no damage found", db.display());
    Ok(())
}
