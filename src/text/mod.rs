//! Text encoders: text in, a vector out, for queries and training targets.
//!
//! [`TextEncoder`] has two implementations: the tutorial's GloVe average
//! ([`GloveAverage`], what `words` uses) and a sentence encoder
//! ([`SentenceEncoder`]: all-MiniLM-L6-v2, BERT with 6 layers and 384
//! dimensions, mean pooling over tokens, L2-normalised), which tells "a man
//! riding a horse" from "a horse riding a man".

mod bert;
mod minilm;
mod query;

pub use minilm::{SentenceEncoder, MAX_TOKENS};
pub use query::{tag_vocabulary, QueryEncoder, TAG_VOCABULARY};

use crate::words::{WordQuery, WordVectors};
use crate::Result;

/// Which text encoder a model was trained with: enough to refuse another.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "EncoderRecord", into = "EncoderRecord")]
pub enum EncoderId {
    /// Word vectors (`glove.6B.50d`): their name, vocabulary size and dimension.
    Words { name: String, words: usize, dim: usize },
    /// A sentence encoder (`all-MiniLM-L6-v2`): its name and dimension.
    Sentences { name: String, dim: usize },
}

/// How a model file records its encoder (`{name, dim, words}`, `words` 0
/// for a sentence encoder): kept so models trained before stay readable.
#[derive(serde::Serialize, serde::Deserialize)]
struct EncoderRecord {
    name: String,
    dim: usize,
    words: usize,
}

impl From<EncoderRecord> for EncoderId {
    fn from(r: EncoderRecord) -> Self {
        match r.words {
            0 => EncoderId::Sentences { name: r.name, dim: r.dim },
            words => EncoderId::Words { name: r.name, words, dim: r.dim },
        }
    }
}

impl From<EncoderId> for EncoderRecord {
    fn from(id: EncoderId) -> Self {
        match id {
            EncoderId::Words { name, words, dim } => EncoderRecord { name, dim, words },
            EncoderId::Sentences { name, dim } => EncoderRecord { name, dim, words: 0 },
        }
    }
}

impl EncoderId {
    /// Word vectors as a model records them: the file's stem (a cached
    /// conversion `<stem>-<hash>.wv` counts as `<stem>`), size and dimension.
    pub fn of(vectors: &WordVectors) -> Self {
        let stem = vectors.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = match stem.rsplit_once('-') {
            Some((s, h)) if h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()) => s.to_owned(),
            _ => stem,
        };
        EncoderId::Words { name, words: vectors.len(), dim: vectors.dim() }
    }

    /// A sentence encoder as a model records it.
    pub fn sentences(encoder: &dyn TextEncoder) -> Self {
        EncoderId::Sentences { name: encoder.name(), dim: encoder.dim() }
    }

    pub fn name(&self) -> &str {
        match self {
            EncoderId::Words { name, .. } | EncoderId::Sentences { name, .. } => name,
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            EncoderId::Words { dim, .. } | EncoderId::Sentences { dim, .. } => *dim,
        }
    }
}

impl std::fmt::Display for EncoderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncoderId::Sentences { name, dim } => write!(f, "{name} ({dim}-d sentence encoder)"),
            EncoderId::Words { name, words, dim } => write!(f, "{name} ({words} words x {dim})"),
        }
    }
}

/// An encoded text, and whether it was cut to the model's length limit.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub vector: Vec<f32>,
    pub truncated: bool,
}

/// Text to vectors.
pub trait TextEncoder: Send + Sync {
    /// What a trained model records to refuse another encoder (`glove.6B.50d`, `all-MiniLM-L6-v2`).
    fn name(&self) -> String;
    fn dim(&self) -> usize;
    /// Encodes each text; empty or whitespace-only text is an error.
    fn encode(&self, texts: &[&str]) -> Result<Vec<Encoded>>;
}

/// The tutorial's text side: the mean of the words' GloVe vectors
/// (`-word` subtracts), for labels and short queries.
pub struct GloveAverage<'a>(pub &'a WordVectors);

impl TextEncoder for GloveAverage<'_> {
    fn name(&self) -> String {
        EncoderId::of(self.0).name().to_owned()
    }

    fn dim(&self) -> usize {
        self.0.dim()
    }

    fn encode(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        texts
            .iter()
            .map(|t| Ok(Encoded { vector: self.0.query_vector(&WordQuery::parse(t)?)?, truncated: false }))
            .collect()
    }
}

#[cfg(test)]
mod encoder_id_tests {
    use super::EncoderId;

    #[test]
    fn encoder_ids_read_and_write_the_model_file_format() {
        let words: EncoderId = serde_json::from_str(r#"{"name":"glove.6B.50d","dim":50,"words":400000}"#).unwrap();
        assert_eq!(words, EncoderId::Words { name: "glove.6B.50d".into(), words: 400000, dim: 50 });
        let sentences: EncoderId = serde_json::from_str(r#"{"name":"all-MiniLM-L6-v2","dim":384,"words":0}"#).unwrap();
        assert_eq!(sentences, EncoderId::Sentences { name: "all-MiniLM-L6-v2".into(), dim: 384 });
        assert_eq!(serde_json::to_value(&sentences).unwrap()["words"], 0, "written as before");
        assert_eq!(sentences.to_string(), "all-MiniLM-L6-v2 (384-d sentence encoder)");
        assert_eq!(words.to_string(), "glove.6B.50d (400000 words x 50)");
    }
}
