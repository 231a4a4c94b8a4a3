//! `imgsearch train`: the joint image-text model, trained on the stored embeddings.

use super::*;

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
pub(super) fn beside(data_root: &std::path::Path, name: &str) -> Option<PathBuf> {
    data_root.parent().map(|p| p.join(name)).filter(|p| p.exists())
}

impl TextArgs {
    /// The captions file given, else the one beside the data folder.
    pub(super) fn captions_or_beside(&self, data_root: &std::path::Path) -> Option<PathBuf> {
        self.captions.clone().or_else(|| beside(data_root, "captions.json"))
    }

    /// The captions file to train on, if any.
    pub(super) fn captions_file(&self, data_root: &std::path::Path) -> Option<PathBuf> {
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
    pub(super) fn options(&self) -> TrainOptions {
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

/// An epoch progress bar showing the loss.
pub(super) fn epoch_bar(epochs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(epochs as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} epoch {pos}/{len}  loss {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Trains the joint model (`joint::data::fit`) with an epoch bar showing the loss.
#[allow(clippy::too_many_arguments)]
pub(super) fn fit_with_bar(
    backbone: Backbone,
    side: &crate::joint::data::TextSide<'_>,
    train_set: &crate::joint::data::Examples,
    captions: Option<&std::collections::HashMap<String, Vec<f32>>>,
    test_keys: Vec<String>,
    split_source: String,
    options: &TrainOptions,
    skip_unknown_labels: bool,
) -> anyhow::Result<crate::joint::data::Fitted> {
    let bar = epoch_bar(options.epochs);
    let fitted = crate::joint::data::fit(
        backbone,
        side,
        train_set,
        captions,
        test_keys,
        split_source,
        options,
        skip_unknown_labels,
        |e, loss| {
            bar.set_position(e as u64);
            bar.set_message(format!("{loss:.4}"));
        },
    )?;
    bar.finish_and_clear();
    Ok(fitted)
}

pub(super) fn train(models_dir: &std::path::Path, db: &std::path::Path, a: TrainArgs) -> anyhow::Result<()> {
    use crate::joint::data::evaluate;
    let data = crate::joint::data::LabelledImagesRoot::read(&a.data)?;
    // Load the word vectors first: a bad --words file fails before any embedding.
    let words = crate::words::open(models_dir, a.vectors.as_deref())?;
    let embedder = load_embedder(models_dir, a.backbone)?;
    let mut library = open_library(models_dir, db, a.backbone, a.vectors.as_deref(), Access::Write)?;
    let (indexed, _) = index_into(&mut library, &embedder, std::slice::from_ref(&data.root))?;
    drop(embedder);
    let store = library.store();
    let options = a.recipe.options();
    let split = crate::joint::data::read_split(a.split.as_deref(), &data.items, options.seed)?;
    let embeddings: Vec<Option<Vec<f32>>> = data
        .paths
        .iter()
        .map(|p| store.by_path(&crate::files::path_to_text(p))?.map(|r| store.embedding(&r)).transpose())
        .collect::<crate::Result<_>>()?;
    let (train_set, test_set, missing) =
        crate::joint::data::split_examples(&split, &data.items, |i| embeddings[i].clone());
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
    let fitted = fit_with_bar(
        a.backbone,
        &side,
        &train_set,
        captions.as_ref(),
        test_set.keys.clone(),
        split.source.clone(),
        &options,
        a.skip_unknown_labels,
    )?;
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
    let info = serde_json::to_string_pretty(&fitted.info)?;
    let weights = JointModel::weights_bytes(&fitted.tensors)?;
    let text = serde_json::to_string_pretty(&report)?;
    let saved = library.save_model(&NewModel { info: &info, weights: &weights, report: &text }, &fitted.model)?;
    let (joint_vectors, saved_in) = (saved.rows, saved.location);
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
