//! all-MiniLM-L6-v2 on candle: the `tokenizers` crate with the model's own
//! tokenizer.json, candle-transformers' BERT, mean pooling over the real
//! (unpadded) tokens, L2 normalisation — sentence-transformers' recipe.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, HiddenAct, PositionEmbeddingType};
use tokenizers::Tokenizer;

use super::{Encoded, TextEncoder};
use crate::{Error, Result};

/// The model's max_seq_length (sentence_bert_config.json): longer text is cut.
pub const MAX_TOKENS: usize = 256;

/// The sentence encoder.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
}

fn config() -> Config {
    Config {
        vocab_size: 30522,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        hidden_act: HiddenAct::Gelu,
        hidden_dropout_prob: 0.0,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        initializer_range: 0.02,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        model_type: Some("bert".into()),
    }
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
        // SAFETY: the weights file is only read, and not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu)? };
        let model = BertModel::load(vb, &config()).map_err(|e| Error::Checkpoint { path: weights, reason: e.to_string() })?;
        Ok(Self { model, tokenizer })
    }

    /// Encodes a batch padded to its longest text.
    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Msg(format!("tokenizing text: {e}")))?;
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let n = texts.len();
        let (mut ids, mut mask) = (vec![0u32; n * len], vec![0u32; n * len]);
        for (i, e) in encodings.iter().enumerate() {
            for (j, &id) in e.get_ids().iter().enumerate() {
                ids[i * len + j] = id;
                mask[i * len + j] = 1;
            }
        }
        let dev = Device::Cpu;
        let ids_t = Tensor::from_vec(ids, (n, len), &dev)?;
        let mask_t = Tensor::from_vec(mask, (n, len), &dev)?;
        let hidden = self.model.forward(&ids_t, &ids_t.zeros_like()?, Some(&mask_t))?;
        // Mean over the real tokens.
        let m = mask_t.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let rows = mean.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .zip(&encodings)
            .map(|(v, e)| Encoded { vector: crate::query::unit(&v), truncated: !e.get_overflowing().is_empty() })
            .collect())
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
        // Batches of similar length waste little on padding.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out: Vec<Option<Encoded>> = vec![None; texts.len()];
        for chunk in order.chunks(32) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            for (&i, e) in chunk.iter().zip(self.encode_batch(&batch)?) {
                out[i] = Some(e);
            }
        }
        Ok(out.into_iter().map(|e| e.expect("every text encoded")).collect())
    }
}
