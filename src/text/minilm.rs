//! all-MiniLM-L6-v2: the `tokenizers` crate with the model's own
//! tokenizer.json, our BERT forward ([`super::bert`]), mean pooling over the
//! tokens, L2 normalisation — sentence-transformers' recipe.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::bert::Bert;

use super::{Encoded, TextEncoder};
use crate::{Error, Result};

/// The model's max_seq_length (sentence_bert_config.json): longer text is cut.
pub const MAX_TOKENS: usize = 256;

/// The sentence encoder.
pub struct SentenceEncoder {
    model: Bert,
    tokenizer: Tokenizer,
}

impl SentenceEncoder {
    /// The model's directory in the model directory (`models fetch` fills it).
    pub fn dir(models: &Path) -> PathBuf {
        models.join(crate::models::MINILM.dir)
    }

    /// Loads `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let weights = dir.join("model.safetensors");
        let tokenizer_file = dir.join("tokenizer.json");
        for f in [&weights, &tokenizer_file] {
            if !f.exists() {
                return Err(Error::ModelMissing { path: f.clone() });
            }
        }
        let mut tokenizer = Tokenizer::from_file(&tokenizer_file)
            .map_err(|e| Error::Checkpoint { path: tokenizer_file.clone(), reason: e.to_string() })?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| Error::Checkpoint { path: tokenizer_file.clone(), reason: e.to_string() })?;
        tokenizer.with_padding(None);
        Ok(Self { model: Bert::load(&weights)?, tokenizer })
    }

    /// Encodes texts in groups of 32 of similar length, the groups in parallel.
    fn encode_all(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Msg(format!("tokenizing text: {e}")))?;
        // Grouping by length keeps the groups' work even.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let ids: Vec<&[u32]> = order.iter().map(|&i| encodings[i].get_ids()).collect();
        let pooled = self.model.mean_pooled_par(&ids, 32);
        let mut out: Vec<Option<Encoded>> = vec![None; texts.len()];
        for (&i, v) in order.iter().zip(pooled) {
            let truncated = !encodings[i].get_overflowing().is_empty();
            out[i] = Some(Encoded { vector: crate::vector::unit(&v), truncated });
        }
        Ok(out.into_iter().map(|e| e.expect("every text encoded")).collect())
    }
}

impl TextEncoder for SentenceEncoder {
    fn name(&self) -> String {
        "all-MiniLM-L6-v2".into()
    }

    fn dim(&self) -> usize {
        384
    }

    fn encode(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        if texts.iter().any(|t| t.trim().is_empty()) {
            return Err(Error::EmptyQuery);
        }
        self.encode_all(texts)
    }
}
