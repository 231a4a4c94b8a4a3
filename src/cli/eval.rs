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
    let embedder = load_embedder(models_dir, a.backbone)?;
    let data = crate::joint::data::LabelledImagesRoot::read(&a.data)
        .with_context(|| format!("reading labelled images from {}", a.data.display()))?;
    let embedded = crate::eval::embed(&embedder, &data);
    let mut report = crate::eval::images(a.backbone, &embedder, &data, &embedded)?;
    if a.store {
        let mut library = open_library(models_dir, db, a.backbone, None, Access::Write)?;
        index_into(&mut library, &embedder, std::slice::from_ref(&data.root))?;
        report["store"] = crate::eval::through_store(&library, &data, &embedded.embeddings)?;
    }
    drop(embedder);
    if !a.no_joint {
        let sentences = load_sentence_encoder(models_dir, a.text.encoder)?;
        let split = a.split.clone().or_else(|| beside(&data.root, "split.json"));
        let captions = a.text.captions_or_beside(&data.root);
        let job = crate::eval::joint::Job {
            models: models_dir,
            backbone: a.backbone,
            words_file: a.vectors.as_deref(),
            sentences: sentences.as_ref(),
            options: a.recipe.options(),
            split_file: split.as_deref(),
            captions_file: captions.as_deref(),
            labels_only: a.text.no_captions,
        };
        let bar = epoch_bar(job.options.epochs);
        report["joint"] = crate::eval::joint::joint(&job, &data, &embedded.embeddings, |e, loss| {
            bar.set_position(e as u64);
            bar.set_message(format!("{loss:.4}"));
        })?;
        bar.finish_and_clear();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        let r = &report;
        println!("backbone            {}", a.backbone);
        println!("images              {} ({} failed)", r["images"], r["failed"]);
        println!("cat: top-5 has a cat class (281-285)   {:.3} of {}", f(&r["cat_top5_cat_class"]), r["cat_images"]);
        println!("dog: top-5 has a dog class (151-268)   {:.3} of {}", f(&r["dog_top5_dog_class"]), r["dog_images"]);
        println!(
            "image->image mean precision@10         {:.3} (all images, label match, query excluded)",
            f(&r["image_to_image_precision_at_10"])
        );
        println!(
            "embedding, end to end                  {:.1} s, {:.1} img/s",
            f(&r["embed_seconds"]),
            f(&r["embed_images_per_second"])
        );
        println!(
            "near-duplicates: {} originals with a re-encoded, a half-size and a 90% crop copy; pair precision / recall:",
            r["duplicates"]["originals_copied"]
        );
        for s in r["duplicates"]["pairs"].as_array().into_iter().flatten() {
            let d = f(&s["max_distance"]);
            let default = if (d - crate::duplicates::default_max_distance(a.backbone) as f64).abs() < 1e-6 {
                "  (default)"
            } else {
                ""
            };
            println!("  max distance {d:.2}: {:.3} / {:.3}{default}", f(&s["precision"]), f(&s["recall"]));
        }
        if let Some(s) = r.get("store") {
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
        if let Some(j) = r.get("joint") {
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
    for f in &embedded.failed {
        eprintln!("skipped: {f}");
    }
    Ok(())
}
