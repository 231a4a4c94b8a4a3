//! `imgsearch index`: walk folders into the store, then keep the HNSW graph and text vectors current.

use super::*;

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Folders to index.
    #[arg(required = true)]
    pub folders: Vec<PathBuf>,
    /// Backbone network (an index holds one backbone's embeddings).
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Indexes `folders` into `library` with a progress bar ([`Library::index`]:
/// then the store's graph and the loaded text sides are brought up to date).
pub(super) fn index_into(
    library: &mut Library,
    embedder: &Embedder,
    folders: &[PathBuf],
) -> anyhow::Result<(crate::indexer::IndexReport, crate::library::Upkeep)> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (report, upkeep) = library.index(embedder, folders, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    for (path, reason) in &report.failed {
        eprintln!("skipped: {}: {reason}", path.display());
    }
    for (path, reason) in &report.warnings {
        eprintln!("warning: {}: {reason}", path.display());
    }
    Ok((report, upkeep))
}

/// Refuses a folder that is not there before anything is opened or created.
pub(super) fn check_folders(folders: &[PathBuf]) -> anyhow::Result<()> {
    for f in folders {
        anyhow::ensure!(f.is_dir(), "{}: no such folder (pass a folder of images)", f.display());
    }
    Ok(())
}

pub(super) fn index(models_dir: &std::path::Path, db: &std::path::Path, a: IndexArgs) -> anyhow::Result<()> {
    check_folders(&a.folders)?;
    let embedder = load_embedder(models_dir, a.backbone)?;
    let mut library = open_library(models_dir, db, a.backbone, None, Access::Write)?;
    // The text space first, so every text side's vectors are made for the
    // new images and text search starts at once.
    if let Err(e) = library.text_space() {
        eprintln!("note: text-search vectors not updated ({e:#}); they are made at the first text search");
    }
    let (report, upkeep) = index_into(&mut library, &embedder, &a.folders)?;
    let store = library.store();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "indexed {} new, {} unchanged, {} moved, {} copies, {} removed, {} failed in {:.1} s ({} images in {})",
            report.embedded,
            report.unchanged,
            report.moved,
            report.copies,
            report.removed,
            report.failed.len(),
            report.seconds,
            store.len()?,
            store.describe()
        );
        if let Some(rows) = upkeep.graph_rows {
            println!("HNSW index: {rows} vectors");
        }
        if let Some(rows) = upkeep.trained_rows {
            println!("joint embeddings: {rows} vectors");
        }
    }
    // Everything else is indexed and kept; the status says something was skipped.
    if !report.failed.is_empty() {
        bail!("{} files could not be indexed (listed above as skipped)", report.failed.len());
    }
    Ok(())
}
