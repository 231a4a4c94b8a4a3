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
    let mut library = open_library(models_dir, db, a.backbone, None, Access::Read)?;
    let checked = library.verify()?;
    for line in &checked.sound {
        println!("{line}");
    }
    let problems = checked.damaged;
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
