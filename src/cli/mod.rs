//! The command line: argument parsing and the commands it runs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::backbone::{imagenet_classes, softmax, top_k, Backbone, Embedder, DEFAULT_MAX_PIXELS};
use crate::joint::{JointModel, OptimizerKind, TrainOptions};
use crate::library::{Access, Library, Settings};
use crate::models;
use crate::store::NewModel;

mod duplicates;
mod embed;
mod eval;
mod fetch;
mod index;
mod search;
mod serve;
mod tag;
mod train;
mod verify;
mod words;

pub use self::duplicates::*;
pub use self::embed::*;
pub use self::eval::*;
pub use self::fetch::*;
pub use self::index::*;
pub use self::search::*;
pub use self::serve::*;
pub use self::tag::*;
pub use self::train::*;
pub use self::verify::*;
pub use self::words::*;

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

    /// The arithmetic of the CNN's 1x1 products: `auto` (bf16 on AMX tiles
    /// where the CPU has them, else f32), `f32` (exact), `bf16` (AMX; the
    /// top-5 classes agree with f32's on 99.6 % of images) or `int8`
    /// (AVX-512 VNNI; faster, but they agree on only ~95 %).
    #[arg(long, global = true, env = "IMGSEARCH_PRECISION", value_enum, default_value = "auto")]
    pub precision: crate::backbone::Precision,

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
    /// Groups of near-duplicate images (re-encoded, resized or cropped
    /// copies), largest first, with the space their copies take. Never deletes.
    Duplicates(DuplicatesArgs),
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

/// The default index: one per user, in the user's data folder (XDG).
pub fn default_db() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("imgsearch").join("index")
}

/// Runs a parsed command line. Errors are printed by `main`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let models_dir = models::models_dir(args.models_dir.as_deref());
    let db = args.db.clone().unwrap_or_else(default_db);
    let db = &db;
    let _ = PRECISION.set(args.precision);
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
        Command::Duplicates(a) => duplicates(&models_dir, db, a),
        Command::Serve(a) => serve(&models_dir, db, a),
        Command::Verify(a) => verify(&models_dir, db, a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Args::command(), "imgsearch", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// `--precision`, set once by [`run`] for every command that embeds.
static PRECISION: std::sync::OnceLock<crate::backbone::Precision> = std::sync::OnceLock::new();

fn load_embedder(models_dir: &std::path::Path, backbone: Backbone) -> anyhow::Result<Embedder> {
    let precision = PRECISION.get().copied().unwrap_or_default();
    let embedder =
        Embedder::load(&models::backbone_weights(models_dir, backbone), backbone.config())?.with_precision(precision);
    use crate::backbone::Precision;
    match (precision, embedder.model().runs()) {
        (Precision::Int8, Precision::F32) => {
            eprintln!("note: --precision int8 needs a CPU with AVX-512 VNNI; running f32")
        }
        (Precision::Bf16, Precision::F32) => {
            eprintln!("note: --precision bf16 needs a CPU with AMX tiles (Sapphire Rapids or later); running f32")
        }
        _ => {}
    }
    Ok(embedder)
}

/// Resolves `--class`: an index, or a name matched against the class names
/// and synonyms; an unknown name gets the closest names suggested.
pub fn resolve_class(spec: &str) -> anyhow::Result<usize> {
    Ok(crate::backbone::resolve_class(spec)?)
}

/// Opens the library in `db` (a folder or a PostgreSQL database): for
/// reading, a missing folder says how to make it.
fn open_library(
    models_dir: &std::path::Path,
    db: &std::path::Path,
    backbone: Backbone,
    words: Option<&std::path::Path>,
    access: Access,
) -> anyhow::Result<Library> {
    let settings = Settings {
        db: db.to_path_buf(),
        models: models_dir.to_path_buf(),
        backbone,
        words_file: words.map(|w| w.to_path_buf()),
    };
    Ok(Library::open(settings, access)?)
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
