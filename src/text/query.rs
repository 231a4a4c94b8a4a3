//! The text side a trained model is queried with: the word vectors it was
//! trained on, or the sentence encoder (with a tag vocabulary embedded by
//! it once, so `tag` still answers with words).

use std::path::{Path, PathBuf};

use super::EncoderId;
use super::{SentenceEncoder, TextEncoder};
use crate::words::{write_compact, RawVectors, WordQuery, WordVectors};
use crate::{Error, Result};

/// Longest text query, bytes: far beyond the encoder's 256 tokens, and
/// refused before tokenizing, so one request's work stays bounded.
pub const MAX_QUERY_BYTES: usize = 4096;

/// Words of the tag vocabulary for a sentence encoder: the most frequent
/// GloVe words (GloVe's vocabulary is in frequency order).
pub const TAG_VOCABULARY: usize = 20_000;

/// How a model's text queries are encoded, and the words tags come from.
pub enum QueryEncoder {
    Words(WordVectors),
    Sentences {
        encoder: Box<SentenceEncoder>,
        /// The tag vocabulary, embedded on first use (a minute once, then cached).
        tags: std::sync::OnceLock<WordVectors>,
        models: PathBuf,
        words_file: Option<PathBuf>,
    },
}

impl QueryEncoder {
    /// The sentence encoder (what a store with no trained model is queried with).
    pub fn sentences(models: &Path, words_file: Option<&Path>) -> Result<Self> {
        let encoder = SentenceEncoder::load(&SentenceEncoder::dir(models))?;
        Ok(Self::Sentences {
            encoder: Box::new(encoder),
            tags: std::sync::OnceLock::new(),
            models: models.to_path_buf(),
            words_file: words_file.map(Path::to_path_buf),
        })
    }

    /// The encoder a model trained with `trained` needs. `words_file` is the
    /// user's word-vector file (default GloVe 50d); a mismatch is refused with both names.
    pub fn for_model(models: &Path, trained: &EncoderId, words_file: Option<&Path>) -> Result<Self> {
        if let EncoderId::Sentences { .. } = trained {
            let encoder = Self::sentences(models, words_file)?;
            let loaded = encoder.id();
            if &loaded != trained {
                return Err(Error::ModelMismatch {
                    what: "text encoder".into(),
                    trained: trained.to_string(),
                    loaded: loaded.to_string(),
                    hint: "retrain with `imgsearch train`".into(),
                });
            }
            return Ok(encoder);
        }
        let words = crate::words::open(models, words_file)?;
        let loaded = EncoderId::of(&words);
        if &loaded != trained {
            return Err(Error::ModelMismatch {
                what: "word vectors".into(),
                trained: trained.to_string(),
                loaded: loaded.to_string(),
                hint: "pass the --words file it was trained with, or retrain with `imgsearch train`".into(),
            });
        }
        Ok(Self::Words(words))
    }

    /// What the encoder is, as a model records it.
    pub fn id(&self) -> EncoderId {
        match self {
            Self::Words(w) => EncoderId::of(w),
            Self::Sentences { encoder, .. } => EncoderId::sentences(encoder.as_ref()),
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            Self::Words(w) => w.dim(),
            Self::Sentences { encoder, .. } => encoder.dim(),
        }
    }

    /// A text query's vector: word vectors sum the words (`-word`
    /// subtracts); the sentence encoder embeds the text without the `-word`
    /// terms and subtracts each of those embedded alone. Also says whether
    /// the text was cut to the model's length.
    pub fn query(&self, text: &str) -> Result<(Vec<f32>, bool)> {
        if text.len() > MAX_QUERY_BYTES {
            return Err(Error::QueryTooLong { bytes: text.len(), limit: MAX_QUERY_BYTES });
        }
        match self {
            Self::Words(words) => Ok((words.query_vector(&WordQuery::parse(text)?)?, false)),
            Self::Sentences { encoder, .. } => {
                let (neg, pos): (Vec<&str>, Vec<&str>) =
                    text.split_whitespace().partition(|t| t.starts_with('-') && t.len() > 1);
                let positive = pos.join(" ");
                if positive.trim().is_empty() && neg.is_empty() {
                    return Err(Error::EmptyQuery);
                }
                let mut v = vec![0f32; encoder.dim()];
                let mut truncated = false;
                if !positive.trim().is_empty() {
                    let e = encoder.encode(&[positive.as_str()])?.remove(0);
                    truncated = e.truncated;
                    v.iter_mut().zip(&e.vector).for_each(|(a, b)| *a += b);
                }
                let negs: Vec<&str> = neg.iter().map(|t| &t[1..]).collect();
                if !negs.is_empty() {
                    for e in encoder.encode(&negs)? {
                        v.iter_mut().zip(&e.vector).for_each(|(a, b)| *a -= b);
                    }
                }
                Ok((v, truncated))
            }
        }
    }

    /// The words tags are chosen from (vectors in the model's target space).
    pub fn tag_words(&self) -> Result<&WordVectors> {
        match self {
            Self::Words(w) => Ok(w),
            Self::Sentences { encoder, tags, models, words_file } => {
                if let Some(t) = tags.get() {
                    return Ok(t);
                }
                let words = crate::words::open(models, words_file.as_deref())?;
                let made = tag_vocabulary(models, encoder, &words)?;
                // Two threads may both make it; the cached file is the same.
                Ok(tags.get_or_init(|| made))
            }
        }
    }
}

fn tag_vocabulary_path(models: &Path, words: &WordVectors) -> PathBuf {
    models.join("words-cache").join(format!(
        "{}-tags-{}-{TAG_VOCABULARY}.wv",
        "all-MiniLM-L6-v2",
        EncoderId::of(words).name().to_owned()
    ))
}

/// The tag vocabulary embedded by the sentence encoder, made once (about a
/// minute on 2 cores) and cached in the model directory.
pub fn tag_vocabulary(models: &Path, encoder: &SentenceEncoder, words: &WordVectors) -> Result<WordVectors> {
    let path = tag_vocabulary_path(models, words);
    if path.exists() {
        return WordVectors::open(&path);
    }
    let n = TAG_VOCABULARY.min(words.len());
    // Alphabetic words only: GloVe's most frequent entries include punctuation.
    let chosen: Vec<String> = (0..words.len())
        .map(|i| words.word(i))
        .filter(|w| w.chars().all(char::is_alphabetic))
        .take(n)
        .map(str::to_owned)
        .collect();
    eprintln!("embedding {} tag words with {} once (cached in {})", chosen.len(), encoder.name(), path.display());
    let refs: Vec<&str> = chosen.iter().map(String::as_str).collect();
    let data: Vec<f32> = encoder.encode(&refs)?.into_iter().flat_map(|e| e.vector).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write_compact(&RawVectors { words: chosen, dim: encoder.dim(), data }, &path)?;
    WordVectors::open(&path)
}
