//! The joint-model figures of `eval`: train on the split's train images,
//! measure every text side (zero-shot, trained, fused, and variants) on its
//! test images.

use std::path::Path;

use crate::backbone::Backbone;
use crate::joint::data::LabelledImagesRoot;
use crate::joint::{JointModel, TrainOptions};
use crate::{Error, Result};

/// Words no Pascal label is (nor was a label word of the tutorial), for
/// `eval`'s held-out word->image figure: scenes, things, people, actions.
pub const HELD_OUT_WORDS: &[&str] = &[
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

/// What the joint-model figures are made with.
pub struct Job<'a> {
    /// The model directory.
    pub models: &'a Path,
    pub backbone: Backbone,
    /// Word vectors (default GloVe 6B 50d).
    pub words_file: Option<&'a Path>,
    /// The sentence encoder for the targets; `None`: the word vectors.
    pub sentences: Option<&'a crate::text::SentenceEncoder>,
    pub options: TrainOptions,
    /// The split; `None`: a seeded 80/20 one.
    pub split_file: Option<&'a Path>,
    /// Captions, for the recall figures (and the targets unless `labels_only`).
    pub captions_file: Option<&'a Path>,
    /// Train on the labels even with captions.
    pub labels_only: bool,
}

/// The joint-model half of `eval`: trains on the split's train images
/// (`on_epoch(epoch, loss)` after each epoch), then measures every text
/// side on its test images.
pub fn joint(
    job: &Job<'_>,
    data: &LabelledImagesRoot,
    embeddings: &[Option<Vec<f32>>],
    on_epoch: impl FnMut(usize, f64),
) -> Result<serde_json::Value> {
    use crate::joint::data::{evaluate, read_split, split_examples};
    let (models_dir, options) = (job.models, job.options.clone());
    let words = crate::words::open(models_dir, job.words_file)?;
    let split = read_split(job.split_file, &data.items, options.seed)?;
    let (train_set, test_set, missing) = split_examples(&split, &data.items, |i| embeddings[i].clone());
    if train_set.is_empty() || test_set.is_empty() {
        return Err(Error::Msg(format!("the split leaves no train or no test images under {}", data.root.display())));
    }
    let glove = crate::text::GloveAverage(&words);
    let side = crate::joint::data::TextSide::of(&glove, job.sentences);
    // Captions for the recall figures whenever there are some; trained on unless `labels_only`.
    let captions = job.captions_file.map(crate::joint::data::read_captions).transpose()?;
    let train_on_captions = !job.labels_only && captions.is_some();
    let caption_targets = match (&captions, train_on_captions) {
        (Some(c), true) => Some(crate::joint::data::caption_targets(c, &train_set.keys, &side)?),
        _ => None,
    };
    let fitted = crate::joint::data::fit(
        job.backbone,
        &side,
        &train_set,
        caption_targets.as_ref(),
        test_set.keys.clone(),
        split.source.clone(),
        &options,
        false,
        on_epoch,
    )?;
    let start = std::time::Instant::now();
    let figures = evaluate(&fitted.model, &fitted.targets, &test_set)?;
    let dim = fitted.model.in_dim();
    let test_cnn: Vec<(&str, Vec<f32>)> = test_set
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), test_set.features[i * dim..(i + 1) * dim].to_vec()))
        .collect();
    let cnn_p10 = crate::metrics::image_precision_at_k(&test_cnn, 10);
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
    let side_figures = |projection: &dyn crate::joint::Projection| -> Result<serde_json::Value> {
        let start = std::time::Instant::now();
        let f = evaluate(projection, &fitted.targets, &test_set)?;
        let projected = projection.project(&test_set.features)?;
        let out_dim = projection.out_dim();
        let rows: Vec<&[f32]> = projected.chunks_exact(out_dim).collect();
        // The tutorial's words that were never labels: the labels of the 10 nearest test images.
        let mut examples = serde_json::Map::new();
        for (word, q) in &words_queries {
            let mut order: Vec<(f32, usize)> =
                rows.iter().enumerate().map(|(i, p)| (crate::metrics::cosine(p, q), i)).collect();
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
                let own_score = crate::metrics::cosine(rows[own], q);
                let better = rows.iter().filter(|p| crate::metrics::cosine(p, q) > own_score).count();
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
                rows.iter().enumerate().map(|(i, p)| (crate::metrics::cosine(p, q), i)).collect();
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
    let config = job.backbone.config();
    let trained_model = JointModel::from_tensors(fitted.info.clone(), &fitted.tensors)?;
    let space = crate::joint::TextSpace::load(models_dir, &config, Some((0, trained_model)), job.words_file)?;
    let query_encoder = &space.encoder;
    let (weights, bias) = crate::joint::zeroshot::classifier(models_dir, job.backbone)?;
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
