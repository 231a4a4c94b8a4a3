//! `imgsearch eval`: the quality and speed figures.

use super::*;

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

/// Quality and speed figures over a labelled folder: the backbone's
/// ImageNet top-5 sanity on the `cat` and `dog` folders, image->image
/// precision@10 and embedding throughput; then the joint model trained on
/// the split's train images and measured on its test images.
pub(super) fn eval(models_dir: &std::path::Path, db: &std::path::Path, a: EvalArgs) -> anyhow::Result<()> {
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
    let through_store =
        if a.store { Some(eval_store(models_dir, db, a.backbone, &embedder, &data, &embeddings)?) } else { None };
    // Near-duplicates: copies of every 20th image, grouped at several distances.
    let distances: Vec<f32> = (6..=16).map(|i| i as f32 * 0.05).collect();
    let measured = crate::duplicates::measure(&embedder, paths, &embeddings, 20, &distances)?;
    let copied = measured.originals;
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
        "duplicates": {
            "originals_copied": copied,
            "copies": copied * 3,
            "default_max_distance": crate::duplicates::DEFAULT_MAX_DISTANCE,
            "pairs": measured
                .scores
                .iter()
                .map(|s| serde_json::json!({"max_distance": s.max_distance, "precision": s.precision, "recall": s.recall}))
                .collect::<Vec<_>>(),
        },
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
        println!(
            "near-duplicates: {copied} originals with a re-encoded, a half-size and a 90% crop copy; pair precision / recall:"
        );
        for s in &measured.scores {
            let default = if (s.max_distance - crate::duplicates::DEFAULT_MAX_DISTANCE).abs() < 1e-6 {
                "  (default)"
            } else {
                ""
            };
            println!("  max distance {:.2}: {:.3} / {:.3}{default}", s.max_distance, s.precision, s.recall);
        }
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
pub(super) fn eval_store(
    models_dir: &std::path::Path,
    db: &std::path::Path,
    backbone: Backbone,
    embedder: &Embedder,
    data: &LabelledImagesRoot,
    embeddings: &[Option<Vec<f32>>],
) -> anyhow::Result<serde_json::Value> {
    use crate::index::{ExactIndex, VectorIndex};
    let mut library = open_library(models_dir, db, backbone, None, Access::Write)?;
    index_into(library.store_mut(), embedder, std::slice::from_ref(&data.root))?;
    library.after_add(None)?;
    let store = library.store();
    // Exact neighbours within the data set, by path.
    let usable: Vec<usize> = (0..data.paths.len()).filter(|&i| embeddings[i].is_some()).collect();
    let dim = store.dim();
    let unit: Vec<f32> =
        usable.iter().flat_map(|&i| crate::query::unit(embeddings[i].as_ref().expect("usable"))).collect();
    let exact = ExactIndex::new(&unit, dim);
    let path_of = |i: usize| data.paths[i].to_string_lossy().into_owned();
    let label_of: std::collections::HashMap<String, &str> =
        usable.iter().map(|&i| (path_of(i), data.items[i].1.as_str())).collect();
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
        let assembled = crate::query::Assembled { query, space: crate::query::Space::Cnn, side: None, note: None };
        let start = std::time::Instant::now();
        let found = library.search(&assembled, 11, None)?;
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
pub(super) const HELD_OUT_WORDS: &[&str] = &[
    "ocean", "water", "beach", "river", "lake", "snow", "grass", "field", "street", "road", "city", "building",
    "house", "window", "sky", "tree", "flowers", "table", "couch", "bed", "kitchen", "computer", "food", "baby",
    "child", "woman", "man", "girl", "boy", "riding", "flying", "sitting", "standing", "running", "parked", "eating",
    "sleeping", "white", "black", "red",
];

/// The fused side with another weight on zero-shot (`eval`'s sweep).
pub(super) struct EvalFusion<'a> {
    pub(super) space: &'a crate::joint::TextSpace,
    pub(super) weight: f32,
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

pub(super) fn eval_joint(
    models_dir: &std::path::Path,
    a: &EvalArgs,
    data: &LabelledImagesRoot,
    embeddings: &[Option<Vec<f32>>],
) -> anyhow::Result<serde_json::Value> {
    use crate::joint::data::evaluate;
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
    let fitted = fit_with_bar(
        a.backbone,
        &side,
        &train_set,
        caption_targets.as_ref(),
        test_set.keys.clone(),
        split.source.clone(),
        &options,
        false,
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
