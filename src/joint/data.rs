//! What the joint model is trained and measured on: label words and their
//! target vectors, train/test splits, and the fit-and-evaluate job shared
//! by `imgsearch train` and `imgsearch eval`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{HeadTensors, JointModel, ModelInfo, TrainOptions, TrainReport};
use crate::text::EncoderId;
use crate::words::WordVectors;
use crate::{Error, Result};

/// A train/test split: image keys `label/file` relative to the data folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<String>,
    pub test: Vec<String>,
    #[serde(skip)]
    pub source: String,
}

impl Split {
    /// Reads `{"train": [...], "test": [...]}`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut split: Split = serde_json::from_str(&text).map_err(|e| {
            Error::Msg(format!(
                "{}: not a split file ({e}); expected {{\"train\": [...], \"test\": [...]}}",
                path.display()
            ))
        })?;
        split.source = path.display().to_string();
        Ok(split)
    }

    /// A seeded split per label: 20% of each label's images (at least one
    /// where a label has two or more) go to test.
    pub fn seeded(items: &[(String, String)], seed: u64) -> Self {
        let mut by_label: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (key, label) in items {
            by_label.entry(label).or_default().push(key);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for keys in by_label.values_mut() {
            keys.sort_unstable();
            keys.shuffle(&mut rng);
            let n = keys.len();
            let n_test = if n >= 2 { ((n as f64 * 0.2).round() as usize).max(1) } else { 0 };
            test.extend(keys[..n_test].iter().map(|k| k.to_string()));
            train.extend(keys[n_test..].iter().map(|k| k.to_string()));
        }
        train.sort();
        test.sort();
        Split { train, test, source: format!("seeded 80/20 per label (seed {seed})") }
    }
}

/// The words of a label: `dining_table` -> `dining`, `table`.
pub fn label_words(label: &str) -> Vec<String> {
    label
        .split(|c: char| c == '_' || c == '-' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The labels the model predicts and their target vectors (the mean of
/// each label's word vectors).
#[derive(Debug, Clone)]
pub struct LabelTargets {
    pub labels: Vec<(String, Vec<String>)>,
    pub skipped: Vec<String>,
    /// `[labels, dim]`, row-major.
    pub vectors: Vec<f32>,
    pub dim: usize,
}

/// The text side of training: the encoder that makes the targets, what a
/// model records of it, and (for word vectors) the vocabulary labels must be in.
pub struct TextSide<'a> {
    pub encoder: &'a dyn crate::text::TextEncoder,
    pub id: EncoderId,
    pub vocabulary: Option<&'a WordVectors>,
}

impl<'a> TextSide<'a> {
    /// GloVe-style word vectors, averaged.
    pub fn words(encoder: &'a crate::text::GloveAverage<'a>) -> Self {
        Self { encoder, id: EncoderId::of(encoder.0), vocabulary: Some(encoder.0) }
    }

    /// The sentence encoder when there is one, else the word vectors.
    pub fn of(words: &'a crate::text::GloveAverage<'a>, sentences: Option<&'a crate::text::SentenceEncoder>) -> Self {
        match sentences {
            Some(s) => Self::sentences(s),
            None => Self::words(words),
        }
    }

    /// A sentence encoder.
    pub fn sentences(encoder: &'a crate::text::SentenceEncoder) -> Self {
        Self { encoder, id: EncoderId::sentences(encoder), vocabulary: None }
    }

    /// A caption's text as this encoder takes it: word vectors keep the
    /// known words (lower case, punctuation dropped); a sentence encoder
    /// takes it whole. None when nothing is left.
    pub fn caption_text(&self, caption: &str) -> Option<String> {
        match self.vocabulary {
            None => Some(caption.to_owned()).filter(|c| !c.trim().is_empty()),
            Some(words) => {
                let kept: Vec<String> = caption
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(str::to_lowercase)
                    .filter(|w| words.id(w).is_some())
                    .collect();
                (!kept.is_empty()).then(|| kept.join(" "))
            }
        }
    }
}

impl LabelTargets {
    /// Targets for `labels` (deduplicated, sorted): each label's words
    /// (`dining_table` -> "dining table") through the encoder. With word
    /// vectors, a label with a word not in the vocabulary is an error
    /// listing every such label and word, unless `skip_unknown`; fewer than
    /// two usable labels is an error.
    pub fn new(labels: &[String], side: &TextSide<'_>, skip_unknown: bool) -> Result<Self> {
        let mut labels: Vec<String> = labels.to_vec();
        labels.sort();
        labels.dedup();
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for label in &labels {
            let ws = label_words(label);
            let missing: Vec<String> = match side.vocabulary {
                Some(words) => ws.iter().filter(|w| words.id(w).is_none()).cloned().collect(),
                None => Vec::new(),
            };
            if ws.is_empty() || !missing.is_empty() {
                unknown.push((label.clone(), missing));
            } else {
                known.push((label.clone(), ws));
            }
        }
        if !unknown.is_empty() && !skip_unknown {
            let list: Vec<String> = unknown.iter().map(|(l, m)| format!("{l} (unknown: {})", m.join(", "))).collect();
            return Err(Error::UnknownLabels {
                unknown: list.join("; "),
                labels: labels.join(", "),
                vocabulary: side.id.to_string(),
            });
        }
        if known.len() < 2 {
            return Err(Error::TooFewLabels {
                found: known.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>().join(", "),
            });
        }
        let texts: Vec<String> = known.iter().map(|(_, ws)| ws.join(" ")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = side.encoder.encode(&refs)?.into_iter().flat_map(|e| e.vector).collect();
        Ok(Self {
            labels: known,
            skipped: unknown.into_iter().map(|(l, _)| l).collect(),
            vectors,
            dim: side.encoder.dim(),
        })
    }

    pub fn index_of(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|(l, _)| l == label)
    }

    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }
}

/// Labelled examples: keys, labels and raw CNN embeddings `[n, dim]`.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub keys: Vec<String>,
    pub labels: Vec<String>,
    pub features: Vec<f32>,
}

impl Examples {
    pub fn push(&mut self, key: String, label: String, embedding: &[f32]) {
        self.keys.push(key);
        self.labels.push(label);
        self.features.extend_from_slice(embedding);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The joint model's quality figures on held-out images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JointFigures {
    pub images: usize,
    /// Share of images whose nearest label word (among the model's labels) is their label.
    pub tagging_top1: f64,
    /// Mean over labels of the share of the 10 nearest images (by joint
    /// embedding) to the label's word vector that carry the label.
    pub word_to_image_precision_at_10: f64,
    /// Per label: (label, precision@10).
    pub per_label_precision_at_10: Vec<(String, f64)>,
    /// Image -> image precision@10 among these images, in the joint space.
    pub joint_image_precision_at_10: f64,
}

/// Measures a projection into the text space (the trained model, the
/// zero-shot side, their fusion) on `examples` (labels outside `targets` are ignored).
pub fn evaluate(model: &dyn super::Projection, targets: &LabelTargets, examples: &Examples) -> Result<JointFigures> {
    let dim = targets.dim;
    let keep: Vec<(usize, usize)> =
        examples.labels.iter().enumerate().filter_map(|(i, l)| targets.index_of(l).map(|t| (i, t))).collect();
    let in_dim = model.in_dim();
    let features: Vec<f32> =
        keep.iter().flat_map(|&(i, _)| examples.features[i * in_dim..(i + 1) * in_dim].iter().copied()).collect();
    let projected = model.project(&features)?;
    let rows: Vec<&[f32]> = projected.chunks_exact(dim).collect();
    let truth: Vec<usize> = keep.iter().map(|&(_, t)| t).collect();
    let label_vectors: Vec<&[f32]> = (0..targets.labels.len()).map(|t| targets.vector(t)).collect();
    let per_label = crate::metrics::word_precision_at_k(&rows, &truth, &label_vectors, 10);
    let named: Vec<(&str, Vec<f32>)> =
        truth.iter().zip(&rows).map(|(&t, r)| (targets.labels[t].0.as_str(), r.to_vec())).collect();
    Ok(JointFigures {
        images: rows.len(),
        tagging_top1: crate::metrics::nearest_label_accuracy(&rows, &truth, &label_vectors),
        word_to_image_precision_at_10: per_label.iter().sum::<f64>() / per_label.len().max(1) as f64,
        per_label_precision_at_10: targets.labels.iter().map(|(l, _)| l.clone()).zip(per_label).collect(),
        joint_image_precision_at_10: crate::metrics::image_precision_at_k(&named, 10),
    })
}

/// A trained model and what training reported.
pub struct Fitted {
    pub info: ModelInfo,
    pub tensors: HeadTensors,
    pub model: JointModel,
    pub targets: LabelTargets,
    pub report: TrainReport,
}

/// Trains a model on `train` with `words` as targets.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    backbone: crate::backbone::Backbone,
    side: &TextSide<'_>,
    train: &Examples,
    caption_targets: Option<&HashMap<String, Vec<f32>>>,
    test_keys: Vec<String>,
    split_source: String,
    options: &TrainOptions,
    skip_unknown_labels: bool,
    on_epoch: impl FnMut(usize, f64),
) -> Result<Fitted> {
    let targets = LabelTargets::new(&train.labels, side, skip_unknown_labels)?;
    let in_dim = train.features.len() / train.len().max(1);
    // Examples whose label was skipped are left out.
    let (mut x, mut y, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for (i, label) in train.labels.iter().enumerate() {
        if let Some(t) = targets.index_of(label) {
            x.extend_from_slice(&train.features[i * in_dim..(i + 1) * in_dim]);
            // An image's captions where it has some, else its label.
            match caption_targets.and_then(|c| c.get(&train.keys[i])) {
                Some(v) => y.extend_from_slice(v),
                None => y.extend_from_slice(targets.vector(t)),
            }
            keys.push(train.keys[i].clone());
        }
    }
    let (tensors, report) = super::train(&x, &y, in_dim, targets.dim, options, on_epoch)?;
    let info = ModelInfo {
        backbone: backbone.name().to_owned(),
        words: side.id.clone(),
        in_dim,
        hidden: options.hidden,
        out_dim: targets.dim,
        labels: targets.labels.clone(),
        skipped_labels: targets.skipped.clone(),
        train: keys,
        test: test_keys,
        split_source,
        options: options.clone(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        embedding_version: crate::backbone::EMBEDDING_VERSION,
    };
    let model = JointModel::from_tensors(info.clone(), &tensors)?;
    Ok(Fitted { info, tensors, model, targets, report })
}

/// Captions per image key (`label/file`): the shared file's form
/// (`{key: {"label": ..., "captions": [...]}}`) or plain `{key: [...]}`.
pub fn read_captions(path: &Path) -> Result<HashMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Msg(format!("{}: not a captions file ({e})", path.display())))?;
    let object = value
        .as_object()
        .ok_or_else(|| Error::Msg(format!("{}: expected an object of image key -> captions", path.display())))?;
    let mut out = HashMap::new();
    for (key, v) in object {
        let list = v.get("captions").unwrap_or(v);
        let captions: Vec<String> =
            list.as_array().into_iter().flatten().filter_map(|c| c.as_str().map(str::to_owned)).collect();
        out.insert(key.clone(), captions);
    }
    Ok(out)
}

/// The mean (unit) caption embedding of each of `keys` that has usable
/// captions. A caption file matching none of `keys` is an error showing an
/// example key from each side.
pub fn caption_targets(
    captions: &HashMap<String, Vec<String>>,
    keys: &[String],
    side: &TextSide<'_>,
) -> Result<HashMap<String, Vec<f32>>> {
    if !keys.iter().any(|k| captions.contains_key(k)) {
        return Err(Error::Msg(format!(
            "the captions match no indexed training image: caption keys look like \"{}\", image keys like \"{}\" (keys are paths relative to --data)",
            captions.keys().min().map(String::as_str).unwrap_or(""),
            keys.first().map(String::as_str).unwrap_or("")
        )));
    }
    let mut texts = Vec::new();
    let mut owners = Vec::new();
    for key in keys {
        for c in captions.get(key).into_iter().flatten() {
            if let Some(t) = side.caption_text(c) {
                texts.push(t);
                owners.push(key.clone());
            }
        }
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encoded = side.encoder.encode(&refs)?;
    let mut sums: HashMap<String, Vec<f32>> = HashMap::new();
    for (key, e) in owners.into_iter().zip(encoded) {
        let unit = crate::vector::unit(&e.vector);
        let sum = sums.entry(key).or_insert_with(|| vec![0.0; unit.len()]);
        sum.iter_mut().zip(&unit).for_each(|(s, u)| *s += u);
    }
    Ok(sums)
}

/// Whether a split key names `path` under `root` (`label/file` with `/`).
pub fn key_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    Some(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"))
}

/// The split to train with: the file given, else a seeded one over `items` (`(key, label)`).
pub fn read_split(split: Option<&Path>, items: &[(String, String)], seed: u64) -> Result<Split> {
    Ok(match split {
        Some(path) => Split::read(path)?,
        None => Split::seeded(items, seed),
    })
}

/// Examples for a split's keys: `embedding(i)` gives item `i`'s raw
/// embedding (None when it could not be embedded). Returns the train and
/// test examples and the split keys that match no usable image.
pub fn split_examples(
    split: &Split,
    items: &[(String, String)],
    embedding: impl Fn(usize) -> Option<Vec<f32>>,
) -> (Examples, Examples, Vec<String>) {
    let position: std::collections::HashMap<&str, usize> =
        items.iter().enumerate().map(|(i, (k, _))| (k.as_str(), i)).collect();
    let (mut train, mut test, mut missing) = (Default::default(), Default::default(), Vec::new());
    for (keys, out) in [(&split.train, &mut train), (&split.test, &mut test)] {
        let out: &mut Examples = out;
        for key in keys {
            match position.get(key.as_str()).and_then(|&i| embedding(i).map(|e| (i, e))) {
                Some((i, e)) => out.push(key.clone(), items[i].1.clone(), &e),
                None => missing.push(key.clone()),
            }
        }
    }
    (train, test, missing)
}

/// A folder of label folders with canonical paths and split keys.
pub struct LabelledImagesRoot {
    pub root: std::path::PathBuf,
    pub paths: Vec<std::path::PathBuf>,
    /// `(key, label)`: key `label/file`, relative to the root.
    pub items: Vec<(String, String)>,
}

impl LabelledImagesRoot {
    pub fn read(root: &Path) -> Result<Self> {
        let root = root
            .canonicalize()
            .map_err(|e| Error::Msg(format!("{}: no such folder of label folders ({e})", root.display())))?;
        let data = crate::metrics::LabelledImages::read(&root)?;
        if data.items.is_empty() {
            return Err(Error::Msg(format!("{}: no images in label folders (`<label>/<image>`)", root.display())));
        }
        let items = data.items.iter().map(|(p, l)| (key_of(&root, p).unwrap_or_default(), l.clone())).collect();
        let paths = data.items.into_iter().map(|(p, _)| p).collect();
        Ok(Self { root, paths, items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_words_split_on_underscore_and_lowercase() {
        assert_eq!(label_words("dining_table"), ["dining", "table"]);
        assert_eq!(label_words("TV-monitor"), ["tv", "monitor"]);
    }

    #[test]
    fn seeded_split_is_per_label_reproducible_and_disjoint() {
        let items: Vec<(String, String)> = (0..50)
            .map(|i| {
                (format!("{}/{i}.jpg", if i < 40 { "a" } else { "b" }), if i < 40 { "a" } else { "b" }.to_string())
            })
            .collect();
        let s = Split::seeded(&items, 3);
        assert_eq!(s, Split::seeded(&items, 3));
        assert_ne!(s.test, Split::seeded(&items, 4).test);
        assert_eq!(s.test.iter().filter(|k| k.starts_with("a/")).count(), 8);
        assert_eq!(s.test.iter().filter(|k| k.starts_with("b/")).count(), 2);
        assert_eq!(s.train.len(), 40);
        assert!(s.test.iter().all(|k| !s.train.contains(k)));
    }
}
