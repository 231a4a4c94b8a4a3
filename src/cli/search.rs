//! `imgsearch search`: by image, text, both, or class-weighted.

use super::*;

#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Query image: a file (embedded on the fly if not indexed) or an indexed key.
    #[arg(long, value_name = "FILE|KEY", required_unless_present = "text")]
    pub image: Option<String>,
    /// Query text, in the text space: a sentence, `dog`, `cat sofa`, `cat -sofa`
    /// (subtracted). With `--image`, both add up in the text space.
    #[arg(long, allow_hyphen_values = true)]
    pub text: Option<String>,
    /// Where the query compares: the CNN's embeddings or the text space;
    /// default: the text space with `--text`, else the CNN's.
    #[arg(long, value_enum)]
    pub space: Option<crate::query::Space>,
    /// How images are put into the text space (`--text`, `--space joint`):
    /// zero-shot (no training), trained (the joint model) or fused; default
    /// fused once a model is trained, else zero-shot.
    #[arg(long, value_enum)]
    pub text_side: Option<crate::joint::Side>,
    /// Word-vector file the joint model was trained with (default: GloVe 6B 50d).
    #[arg(long = "words", value_name = "FILE")]
    pub vectors: Option<PathBuf>,
    /// How many results.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Reweight embeddings by one ImageNet class's classifier weights: an index (284) or a name ("Siamese cat").
    #[arg(long)]
    pub class: Option<String>,
    /// Drop results farther than this angular distance (0..2).
    #[arg(long)]
    pub max_distance: Option<f32>,
    /// Backbone network of the index.
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
    /// Scan every vector instead of using an HNSW index (the local one, used above 20k images, or the database's).
    #[arg(long)]
    pub exact: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Which images a search may return (all when none is given).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only images under this folder.
    #[arg(long, value_name = "FOLDER")]
    pub under: Option<PathBuf>,
    /// Only images with this label (their folder's name).
    #[arg(long)]
    pub label: Option<String>,
    /// Only images taken on or after this date: YYYY, YYYY-MM or YYYY-MM-DD
    /// (the EXIF date, else the file's modification time).
    #[arg(long, value_name = "DATE")]
    pub after: Option<String>,
    /// Only images taken before this date (`--after 2023 --before 2024`: in 2023).
    #[arg(long, value_name = "DATE")]
    pub before: Option<String>,
    /// Only images whose camera make or model contains this (any case).
    #[arg(long)]
    pub camera: Option<String>,
}

impl FilterArgs {
    /// The filter these flags say; a folder that is not there is an error.
    pub(super) fn filter(&self) -> anyhow::Result<crate::store::Filter> {
        let under = match &self.under {
            Some(f) => Some(crate::files::path_to_text(
                &f.canonicalize().with_context(|| format!("--under {}: no such folder", f.display()))?,
            )),
            None => None,
        };
        Ok(crate::query::filter(
            under,
            self.label.as_deref(),
            self.after.as_deref(),
            self.before.as_deref(),
            self.camera.as_deref(),
        )?)
    }
}

pub(super) fn search(models_dir: &std::path::Path, db: &std::path::Path, a: SearchArgs) -> anyhow::Result<()> {
    use crate::query::{Parts, SearchAnswer, Space};
    anyhow::ensure!(a.k >= 1, "-k must be at least 1 (how many results to show)");
    if let Some(m) = a.max_distance {
        anyhow::ensure!((0.0..=2.0).contains(&m), "--max-distance must be between 0 and 2 (angular distance), got {m}");
    }
    let parts = Parts { image: a.image.is_some(), text: a.text.is_some(), class: a.class.is_some(), space: a.space };
    let space = parts.space()?;
    let filter = a.filter.filter()?;
    let mut library = open_library(models_dir, db, a.backbone, a.vectors.as_deref(), Access::Read)?;
    library.store().set_exact(a.exact);
    // The network is loaded only for a new query file or class weights.
    let embedder = std::cell::OnceCell::new();
    let embedder = || -> anyhow::Result<&Embedder> {
        if embedder.get().is_none() {
            let _ = embedder.set(load_embedder(models_dir, a.backbone)?);
        }
        Ok(embedder.get().expect("set above"))
    };
    let embed_new =
        |path: &std::path::Path| -> anyhow::Result<Vec<f32>> { Ok(embedder()?.embed_file(path)?.embedding) };
    let image = a.image.as_deref().map(|spec| library.image_embedding(spec, embed_new)).transpose()?;
    let class_weights = match &a.class {
        Some(spec) => Some(embedder()?.model().class_weights().get(resolve_class(spec)?)?.to_vec1::<f32>()?),
        None => None,
    };
    let text_space = match space {
        Space::Joint => Some(library.text_space()?),
        Space::Cnn => None,
    };
    let assembled =
        crate::query::assemble(space, image, a.text.as_deref(), class_weights, a.text_side, text_space.as_deref())?;
    if let Some(note) = &assembled.note {
        eprintln!("note: {note}");
    }
    let found = library.search(&assembled, a.k, a.max_distance, &filter)?;
    let answer = SearchAnswer::new(&assembled, found, crate::query::Found::hit_with_path);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        for r in &answer.results {
            let path = r.path.as_deref().unwrap_or_default();
            println!("{:>3}  {:.4}  {:>6}  {:<14} {path}", r.rank, r.distance, r.key, r.label);
        }
    }
    Ok(())
}
