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
        crate::joint::WordsId::of(self.0).name
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
