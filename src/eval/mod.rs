//! `eval`: the quality and speed figures over a labelled folder, as one
//! JSON report. The command line only prepares the job and prints.
//!
//! - [`images`]: embedding throughput, the backbone's ImageNet top-5 sanity
//!   on the `cat` and `dog` folders, image->image precision@10 and the
//!   near-duplicate grouping of synthetic copies;
//! - [`through_store`]: image->image search through a store (its own index);
//! - [`joint`]: the joint model trained on the split's train images and
//!   every text side measured on its test images.

pub mod joint;

use crate::backbone::{top_k, Backbone, Embedder};
use crate::joint::data::LabelledImagesRoot;
use crate::library::Library;
use crate::metrics::top_k_hit_rate;
use crate::Result;

/// Every image of a data set embedded once.
pub struct Embedded {
    /// Each image's top-5 ImageNet classes, `None` where it failed.
    pub top5: Vec<Option<Vec<usize>>>,
    /// Each image's raw embedding, `None` where it failed.
    pub embeddings: Vec<Option<Vec<f32>>>,
    /// What failed, one line each.
    pub failed: Vec<String>,
    pub seconds: f64,
}

/// Embeds every image of `data`, end to end (decode, resize, network).
pub fn embed(embedder: &Embedder, data: &LabelledImagesRoot) -> Embedded {
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
    Embedded { top5, embeddings, failed, seconds: start.elapsed().as_secs_f64() }
}

/// The image figures: throughput, cat/dog top-5, image->image
/// precision@10, and near-duplicates (copies of every 20th image grouped
/// at several distances; needs the network to make the copies' embeddings).
pub fn images(
    backbone: Backbone,
    embedder: &Embedder,
    data: &LabelledImagesRoot,
    embedded: &Embedded,
) -> Result<serde_json::Value> {
    let paths = &data.paths;
    let distances: Vec<f32> = (6..=16).map(|i| i as f32 * 0.05).collect();
    let measured = crate::duplicates::measure(embedder, paths, &embedded.embeddings, 20, &distances)?;
    let copied = measured.originals;
    let labelled: Vec<(&str, Vec<f32>)> = data
        .items
        .iter()
        .zip(&embedded.embeddings)
        .filter_map(|((_, label), e)| e.clone().map(|e| (label.as_str(), e)))
        .collect();
    let of_label = |label: &str| -> Vec<Vec<usize>> {
        data.items.iter().zip(&embedded.top5).filter(|((_, l), _)| l == label).filter_map(|(_, t)| t.clone()).collect()
    };
    let (cats, dogs) = (of_label("cat"), of_label("dog"));
    Ok(serde_json::json!({
        "backbone": backbone,
        "images": paths.len(),
        "failed": embedded.failed.len(),
        "cat_top5_cat_class": top_k_hit_rate(&cats, 281..=285),
        "cat_images": cats.len(),
        "dog_top5_dog_class": top_k_hit_rate(&dogs, 151..=268),
        "dog_images": dogs.len(),
        "image_to_image_precision_at_10": crate::metrics::image_precision_at_k(&labelled, 10),
        "embed_seconds": embedded.seconds,
        "embed_images_per_second": paths.len() as f64 / embedded.seconds,
        "duplicates": {
            "originals_copied": copied,
            "copies": copied * 3,
            "default_max_distance": crate::duplicates::default_max_distance(backbone),
            "pairs": measured
                .scores
                .iter()
                .map(|s| serde_json::json!({"max_distance": s.max_distance, "precision": s.precision, "recall": s.recall}))
                .collect::<Vec<_>>(),
        },
    }))
}

/// `eval --store`, over a library the data was indexed into: every
/// image queries it (the store's own search: pgvector, or the embedded
/// HNSW/exact index) for its 10 nearest other images. Precision@10 by
/// label, recall@10 against exact search over the data set, latency.
pub fn through_store(
    library: &Library,
    data: &LabelledImagesRoot,
    embeddings: &[Option<Vec<f32>>],
) -> Result<serde_json::Value> {
    use crate::index::{ExactIndex, VectorIndex};
    let store = library.store();
    // Exact neighbours within the data set, by path.
    let usable: Vec<usize> = (0..data.paths.len()).filter(|&i| embeddings[i].is_some()).collect();
    let dim = store.dim();
    let unit: Vec<f32> =
        usable.iter().flat_map(|&i| crate::vector::unit(embeddings[i].as_ref().expect("usable"))).collect();
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
        let found = library.search(&assembled, 11, None, &Default::default())?;
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
