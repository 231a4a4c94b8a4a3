//! The joint image-word model (after DeViSE): a small head, trained on frozen
//! CNN embeddings, that maps an image into the word-vector space, so images
//! can be tagged with words and found by words.
//!
//! - [`train`]: the head and its training loop (candle autograd).
//! - [`JointModel`]: a trained head, saved as `model.safetensors` plus
//!   `model.json` (what it was trained with) in `<db>/joint/`, loaded with
//!   batch norm folded into the linear layers for inference.
//! - [`data`]: labels to word targets, and train/test splits.
//! - [`zeroshot`]: the text side with no training (ConSE over the ImageNet
//!   classifier); [`space`]: the side a search or tag uses (zero-shot,
//!   trained, fused) and what it needs.

pub mod data;
pub mod space;
pub mod train;
pub mod zeroshot;

pub use space::{Side, TextSpace};

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use train::{train, EpochLoss, HeadTensors, OptimizerKind, TrainOptions, TrainReport};

use crate::text::EncoderId;
use crate::{Error, Result};

/// Raw CNN embeddings into a text space (the trained head, the zero-shot
/// side, their fusion): what a store keeps text-side vectors with.
pub use crate::store::Projection;

impl Projection for JointModel {
    fn in_dim(&self) -> usize {
        self.info.in_dim
    }

    fn out_dim(&self) -> usize {
        self.info.out_dim
    }

    fn fingerprint(&self) -> [u8; 16] {
        self.fingerprint
    }

    fn project(&self, embeddings: &[f32]) -> Result<Vec<f32>> {
        JointModel::project(self, embeddings)
    }
}

/// `model.json`: what a model was trained with and on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub backbone: String,
    pub words: EncoderId,
    pub in_dim: usize,
    pub hidden: usize,
    pub out_dim: usize,
    /// The labels, in order, and the words each one's target averages.
    pub labels: Vec<(String, Vec<String>)>,
    /// Labels left out because a word of theirs is not in the vocabulary.
    pub skipped_labels: Vec<String>,
    /// Training and test images (paths relative to the data folder).
    pub train: Vec<String>,
    pub test: Vec<String>,
    /// Where the split came from: a file, or "seeded 80/20 per label".
    pub split_source: String,
    pub options: TrainOptions,
    pub created_unix: u64,
    /// Which embeddings it was trained on ([`crate::backbone::EMBEDDING_VERSION`]);
    /// a model from before centred embeddings (absent: 1) gets the centre
    /// folded into its first layer when loaded.
    #[serde(default = "uncentred")]
    pub embedding_version: u32,
}

fn uncentred() -> u32 {
    1
}

/// A trained head, ready to project CNN embeddings into the word space.
pub struct JointModel {
    pub info: ModelInfo,
    /// Batch norm folded in: `out = relu(x W1ᵀ + b1) W2ᵀ + b2`.
    w1t: Tensor,
    b1: Tensor,
    w2t: Tensor,
    b2: Tensor,
    /// Identifies the weights (the joint vectors record which model made them).
    fingerprint: [u8; 16],
}

impl JointModel {
    /// Folds the trained tensors into the inference form.
    pub fn from_tensors(info: ModelInfo, t: &HeadTensors) -> Result<Self> {
        let get = |name: &str| -> Result<Vec<f32>> {
            let tensor = t.get(name).ok_or_else(|| Error::Msg(format!("joint model: tensor {name} missing")))?;
            Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
        };
        let fold = |fc: &str, bn: &str, rows: usize, cols: usize| -> Result<(Vec<f32>, Vec<f32>)> {
            let (w, b) = (get(&format!("{fc}.weight"))?, get(&format!("{fc}.bias"))?);
            let (g, s) = (get(&format!("{bn}.weight"))?, get(&format!("{bn}.bias"))?);
            let (m, v) = (get(&format!("{bn}.running_mean"))?, get(&format!("{bn}.running_var"))?);
            if w.len() != rows * cols || [&b, &g, &s, &m, &v].iter().any(|x| x.len() != rows) {
                return Err(Error::Msg(format!("joint model: {fc}/{bn} do not match {rows}x{cols}")));
            }
            // Transposed for `x @ Wᵀ`: [cols, rows].
            let mut wt = vec![0f32; rows * cols];
            let mut bias = vec![0f32; rows];
            for r in 0..rows {
                let scale = g[r] / (v[r] + train::BN_EPS_F32).sqrt();
                bias[r] = (b[r] - m[r]) * scale + s[r];
                for c in 0..cols {
                    wt[c * rows + r] = w[r * cols + c] * scale;
                }
            }
            Ok((wt, bias))
        };
        let (w1t, mut b1) = fold("fc1", "bn1", info.hidden, info.in_dim)?;
        if info.embedding_version < crate::backbone::EMBEDDING_VERSION {
            // Trained on uncentred embeddings: x W1ᵀ = (x - c) W1ᵀ + c W1ᵀ.
            let centre = crate::backbone::centre(info.backbone.parse()?);
            if centre.len() != info.in_dim {
                return Err(Error::Msg(format!(
                    "joint model: {} inputs, embeddings have {}",
                    info.in_dim,
                    centre.len()
                )));
            }
            for (row, &c) in w1t.chunks_exact(info.hidden).zip(centre) {
                b1.iter_mut().zip(row).for_each(|(b, w)| *b += c * w);
            }
        }
        let (w2t, b2) = fold("fc2", "bn2", info.out_dim, info.hidden)?;
        let fingerprint = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for v in [&w1t, &b1, &w2t, &b2] {
                for x in v.iter() {
                    h.update(x.to_le_bytes());
                }
            }
            h.finalize()[..16].try_into().expect("16 bytes")
        };
        let dev = Device::Cpu;
        Ok(Self {
            w1t: Tensor::from_vec(w1t, (info.in_dim, info.hidden), &dev)?,
            b1: Tensor::from_vec(b1, info.hidden, &dev)?,
            w2t: Tensor::from_vec(w2t, (info.hidden, info.out_dim), &dev)?,
            b2: Tensor::from_vec(b2, info.out_dim, &dev)?,
            info,
            fingerprint,
        })
    }

    /// The safetensors bytes of trained tensors (what a database keeps as
    /// `model.safetensors`).
    pub fn weights_bytes(tensors: &HeadTensors) -> Result<Vec<u8>> {
        // candle writes safetensors to a file only; a private temporary one.
        let tmp = std::env::temp_dir().join(format!(
            "imgsearch-model-{}-{}.safetensors",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        candle_core::safetensors::save(tensors, &tmp)?;
        let bytes = std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e));
        let _ = std::fs::remove_file(&tmp);
        bytes
    }

    /// The current model of `store` with the store's id for it; `None`
    /// when none was trained.
    pub fn load_current(store: &dyn crate::store::ImageStore) -> Result<Option<(i64, Self)>> {
        match store.model()? {
            Some(m) => Ok(Some((m.id, Self::from_stored(&m.info, &m.weights, &store.describe())?))),
            None => Ok(None),
        }
    }

    /// A model from its `model.json` text and safetensors bytes (as a store keeps them).
    pub fn from_stored(info: &str, weights: &[u8], source: &str) -> Result<Self> {
        let info: ModelInfo = serde_json::from_str(info)
            .map_err(|e| Error::Store { path: source.into(), reason: format!("bad model description: {e}") })?;
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(weights, &Device::Cpu)?;
        Self::from_tensors(info, &tensors)
    }

    /// Refuses a model trained with another backbone or other word vectors.
    pub fn check_compatible(&self, backbone: &str, words: &EncoderId) -> Result<()> {
        if self.info.backbone != backbone {
            return Err(Error::ModelMismatch {
                what: "backbone".into(),
                trained: self.info.backbone.clone(),
                loaded: backbone.to_owned(),
                hint: format!("pass --backbone {} or retrain with `imgsearch train`", self.info.backbone),
            });
        }
        if &self.info.words != words {
            return Err(Error::ModelMismatch {
                what: "word vectors".into(),
                trained: self.info.words.to_string(),
                loaded: words.to_string(),
                hint: "pass the --words file it was trained with, or retrain with `imgsearch train`".into(),
            });
        }
        Ok(())
    }

    pub fn fingerprint(&self) -> [u8; 16] {
        self.fingerprint
    }

    pub fn in_dim(&self) -> usize {
        self.info.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.info.out_dim
    }

    /// Projects raw CNN embeddings (`[n, in_dim]`, row-major, not unit
    /// length) into the word space: `[n, out_dim]`.
    pub fn project(&self, embeddings: &[f32]) -> Result<Vec<f32>> {
        let n = embeddings.len() / self.in_dim();
        if n == 0 {
            return Ok(Vec::new());
        }
        let x = Tensor::from_slice(embeddings, (n, self.in_dim()), &Device::Cpu)?;
        let h = x.matmul(&self.w1t)?.broadcast_add(&self.b1)?.relu()?;
        let out = h.matmul(&self.w2t)?.broadcast_add(&self.b2)?;
        Ok(out.flatten_all()?.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model trained on uncentred embeddings (no `embedding_version` in
    /// its `model.json`) gives on centred ones what it gave on those.
    #[test]
    fn a_model_from_before_centred_embeddings_reads_centred_ones() {
        let backbone = crate::backbone::Backbone::Lite0;
        let x: Vec<f32> = (0..4 * 1280).map(|i| ((i * 7) % 11) as f32 / 10.0).collect();
        let y: Vec<f32> = (0..4 * 2).map(|i| ((i * 3) % 5) as f32 - 2.0).collect();
        let options = TrainOptions { epochs: 1, batch_size: 2, hidden: 5, ..Default::default() };
        let (t, _) = train(&x, &y, 1280, 2, &options, |_, _| {}).unwrap();
        let mut json = serde_json::json!({
            "backbone": "lite0",
            "words": EncoderId::Words { name: "toy".into(), words: 2, dim: 2 },
            "in_dim": 1280, "hidden": 5, "out_dim": 2, "labels": [], "skipped_labels": [],
            "train": [], "test": [], "split_source": "", "options": options, "created_unix": 0,
        });
        let old: ModelInfo = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(old.embedding_version, 1, "a model.json without the field predates centring");
        json["embedding_version"] = crate::backbone::EMBEDDING_VERSION.into();
        let new: ModelInfo = serde_json::from_value(json).unwrap();
        let (old, new) = (JointModel::from_tensors(old, &t).unwrap(), JointModel::from_tensors(new, &t).unwrap());
        let mut centred = x[..1280].to_vec();
        crate::backbone::centre_in_place(backbone, &mut centred);
        let (want, got) = (new.project(&x[..1280]).unwrap(), old.project(&centred).unwrap());
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g).abs() < 1e-3 * w.abs().max(1.0), "{want:?} vs {got:?}");
        }
        assert_ne!(old.fingerprint(), new.fingerprint(), "the text sides it made are made again");
    }

    #[test]
    fn folded_projection_matches_training_mode_eval_of_the_head() {
        // Train a tiny head, then compare the folded projection with the
        // unfolded formula computed by hand from the saved tensors.
        let x: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 / 5.0).collect();
        let y: Vec<f32> = (0..20).map(|i| ((i * 3) % 5) as f32 - 2.0).collect();
        let options = TrainOptions { epochs: 2, batch_size: 4, hidden: 6, ..Default::default() };
        let (t, _) = train(&x, &y, 4, 2, &options, |_, _| {}).unwrap();
        let info = ModelInfo {
            backbone: "lite0".into(),
            words: EncoderId::Words { name: "toy".into(), words: 2, dim: 2 },
            in_dim: 4,
            hidden: 6,
            out_dim: 2,
            labels: vec![],
            skipped_labels: vec![],
            train: vec![],
            test: vec![],
            split_source: String::new(),
            options,
            created_unix: 0,
            embedding_version: crate::backbone::EMBEDDING_VERSION,
        };
        let model = JointModel::from_tensors(info, &t).unwrap();
        let got = model.project(&x[..4]).unwrap();
        let v = |n: &str| t[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bn = |z: f32, p: &str, i: usize| {
            (z - v(&format!("{p}.running_mean"))[i]) / (v(&format!("{p}.running_var"))[i] + 1e-5).sqrt()
                * v(&format!("{p}.weight"))[i]
                + v(&format!("{p}.bias"))[i]
        };
        let h: Vec<f32> = (0..6)
            .map(|j| {
                let z: f32 = (0..4).map(|c| v("fc1.weight")[j * 4 + c] * x[c]).sum::<f32>() + v("fc1.bias")[j];
                bn(z, "bn1", j).max(0.0)
            })
            .collect();
        for (o, &g) in got.iter().enumerate() {
            let z: f32 = (0..6).map(|j| v("fc2.weight")[o * 6 + j] * h[j]).sum::<f32>() + v("fc2.bias")[o];
            assert!((bn(z, "bn2", o) - g).abs() < 1e-4, "{} vs {g}", bn(z, "bn2", o));
        }
    }
}
