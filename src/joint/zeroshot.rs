//! The zero-shot text side: ConSE (Norouzi et al., 2014, "Zero-Shot Learning
//! by Convex Combination of Semantic Embeddings"). An image's text-space
//! vector is the probability-weighted mean of the text embeddings of its
//! top ImageNet classes, so text search works on any collection with no
//! training at all.
//!
//! Everything comes from what is stored already: the classifier layer is part
//! of the backbone checkpoint and is applied to the *stored* CNN embedding
//! (no image is read again), and the 1000 class texts are embedded once by
//! the text encoder and cached in the model directory.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::Projection;
use crate::backbone::{imagenet_classes, Backbone, Config};
use crate::text::{QueryEncoder, TextEncoder};
use crate::{Error, Result};

/// Classes mixed per image. `eval` over the Pascal split (200 test images):
/// T 10 with temperature 2 gives the best word->image P@10 and caption R@10
/// (T 5 drops both; T 20 adds nothing). See README figures.
pub const TOP_CLASSES: usize = 10;
/// Softmax temperature on the logits: 2 flattens the top classes enough to
/// mix their texts (1 lets the first class dominate).
pub const TEMPERATURE: f32 = 2.0;

/// How a class is put into words for the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassPrompt {
    /// "a photo of a {name}" (CLIP's prompt form).
    PhotoOf,
    /// The short name alone.
    Name,
}

impl ClassPrompt {
    /// The prompt the sentence encoder is given by default: measured by `eval`.
    pub const DEFAULT: Self = Self::PhotoOf;

    fn tag(self) -> &'static str {
        match self {
            Self::PhotoOf => "photo-of",
            Self::Name => "name",
        }
    }

    /// The text of one class.
    pub fn text(self, name: &str) -> String {
        match self {
            Self::PhotoOf => format!("a photo of a {name}"),
            Self::Name => name.to_owned(),
        }
    }
}

/// ConSE over one backbone's classifier and one encoder's class texts.
pub struct ZeroShot {
    /// Classifier, transposed for `x @ Wᵀ`: `[in_dim, classes]`.
    w_t: Tensor,
    b: Tensor,
    /// Unit class-text embeddings, `[classes, dim]`.
    class_texts: Vec<f32>,
    in_dim: usize,
    dim: usize,
    top: usize,
    temperature: f32,
    fingerprint: [u8; 16],
}

impl ZeroShot {
    /// From a classifier (`weights` `[classes, in_dim]` row-major, `bias`)
    /// and class-text embeddings (`[classes, dim]`; normalised here).
    pub fn new(weights: &[f32], bias: &[f32], class_texts: &[f32], dim: usize) -> Result<Self> {
        Self::with(weights, bias, class_texts, dim, TOP_CLASSES, TEMPERATURE)
    }

    /// [`ZeroShot::new`] with another top-T and temperature (for `eval`).
    pub fn with(
        weights: &[f32],
        bias: &[f32],
        class_texts: &[f32],
        dim: usize,
        top: usize,
        temperature: f32,
    ) -> Result<Self> {
        let classes = bias.len();
        if classes == 0 || !weights.len().is_multiple_of(classes) || class_texts.len() != classes * dim {
            return Err(Error::Msg(format!(
                "zero-shot: {classes} classes do not match a classifier of {} values and {} class-text values of {dim}",
                weights.len(),
                class_texts.len()
            )));
        }
        let in_dim = weights.len() / classes;
        let fingerprint = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(b"conse1");
            h.update((top as u64).to_le_bytes());
            h.update(temperature.to_le_bytes());
            for x in weights.iter().chain(bias).chain(class_texts) {
                h.update(x.to_le_bytes());
            }
            h.finalize()[..16].try_into().expect("16 bytes")
        };
        let class_texts: Vec<f32> = class_texts.chunks_exact(dim).flat_map(crate::vector::unit).collect();
        let dev = Device::Cpu;
        let w = Tensor::from_slice(weights, (classes, in_dim), &dev)?;
        Ok(Self {
            w_t: w.t()?.contiguous()?,
            b: Tensor::from_slice(bias, classes, &dev)?,
            class_texts,
            in_dim,
            dim,
            top: top.clamp(1, classes),
            temperature,
            fingerprint,
        })
    }

    /// The zero-shot side of `backbone` for `encoder`: the classifier read
    /// from the converted checkpoint, the class texts from the cache (made
    /// on first use: a second or two with the sentence encoder).
    pub fn load(models: &Path, backbone: &Config, encoder: &QueryEncoder) -> Result<Self> {
        let (weights, bias) = classifier(models, backbone.kind)?;
        let prompt = ClassPrompt::DEFAULT;
        let texts = class_texts(models, encoder, prompt)?;
        Self::new(&weights, &bias, &texts, encoder.dim())
    }

    /// Softmax probabilities of the classes (temperature 1), `[n, classes]`.
    pub fn class_probabilities(&self, embeddings: &[f32]) -> Result<Vec<f32>> {
        self.softmax(embeddings, 1.0)
    }

    fn softmax(&self, embeddings: &[f32], temperature: f32) -> Result<Vec<f32>> {
        let n = embeddings.len() / self.in_dim;
        if n == 0 {
            return Ok(Vec::new());
        }
        let x = Tensor::from_slice(embeddings, (n, self.in_dim), &Device::Cpu)?;
        let logits = x.matmul(&self.w_t)?.broadcast_add(&self.b)?;
        let mut p = logits.flatten_all()?.to_vec1::<f32>()?;
        let classes = self.b.dim(0)?;
        for row in p.chunks_exact_mut(classes) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = ((*v - max) / temperature).exp();
                sum += *v;
            }
            row.iter_mut().for_each(|v| *v /= sum);
        }
        Ok(p)
    }
}

impl Projection for ZeroShot {
    fn in_dim(&self) -> usize {
        self.in_dim
    }

    fn out_dim(&self) -> usize {
        self.dim
    }

    fn fingerprint(&self) -> [u8; 16] {
        self.fingerprint
    }

    /// Each row: `Σ p_c · text_c` over the top-T classes by probability.
    fn project(&self, embeddings: &[f32]) -> Result<Vec<f32>> {
        let p = self.softmax(embeddings, self.temperature)?;
        let classes = self.class_texts.len() / self.dim;
        let mut out = Vec::with_capacity(p.len() / classes.max(1) * self.dim);
        let mut order: Vec<usize> = Vec::with_capacity(classes);
        for row in p.chunks_exact(classes) {
            order.clear();
            order.extend(0..classes);
            order.select_nth_unstable_by(self.top - 1, |&a, &b| row[b].total_cmp(&row[a]));
            let mut v = vec![0f32; self.dim];
            for &c in &order[..self.top] {
                let text = &self.class_texts[c * self.dim..(c + 1) * self.dim];
                v.iter_mut().zip(text).for_each(|(o, t)| *o += row[c] * t);
            }
            out.extend(v);
        }
        Ok(out)
    }
}

/// The classifier layer of a converted backbone, `(_fc.weight, _fc.bias)`,
/// its bias moved to read centred embeddings ([`crate::backbone::centre`]).
pub fn classifier(models: &Path, backbone: Backbone) -> Result<(Vec<f32>, Vec<f32>)> {
    let weights = &crate::models::backbone_weights(models, backbone);
    if !weights.exists() {
        return Err(Error::ModelMissing { path: weights.to_path_buf() });
    }
    let bad = |reason: String| Error::Checkpoint { path: weights.to_path_buf(), reason };
    // SAFETY: the converted checkpoint is only replaced by rename, never written in place.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(weights) }.map_err(|e| bad(e.to_string()))?;
    let get = |name: &str| -> Result<Vec<f32>> {
        let t = st.load(name, &Device::Cpu).map_err(|_| {
            bad(format!(
                "no classifier layer ({name}): zero-shot text search needs an ImageNet classifier; \
                 re-run `imgsearch models fetch`, or train a model with `imgsearch train`"
            ))
        })?;
        Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let (w, mut b) = (get("_fc.weight")?, get("_fc.bias")?);
    // The checkpoint's classifier reads the pooled feature; ours read it centred.
    crate::backbone::fold_into_bias(backbone, &w, &mut b);
    Ok((w, b))
}

/// The 1000 class texts embedded by `encoder`, `[1000, dim]`, cached in the
/// model directory. Word vectors average the known words of a class's name
/// (a name with none falls back to its synonyms; else a zero row, which
/// then adds nothing); the sentence encoder embeds `prompt`.
pub fn class_texts(models: &Path, encoder: &QueryEncoder, prompt: ClassPrompt) -> Result<Vec<f32>> {
    let path = cache_path(models, encoder, prompt);
    if let Some(v) = read_cache(&path, encoder.dim()) {
        return Ok(v);
    }
    let classes = imagenet_classes();
    let data: Vec<f32> = match encoder {
        QueryEncoder::Sentences { encoder, .. } => {
            let texts: Vec<String> = classes.iter().map(|c| prompt.text(&c.name)).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            encoder.encode(&refs)?.into_iter().flat_map(|e| e.vector).collect()
        }
        QueryEncoder::Words(words) => classes
            .iter()
            .flat_map(|c| {
                let known = |text: &str| -> Vec<usize> {
                    text.split(|ch: char| !ch.is_alphanumeric())
                        .filter(|w| !w.is_empty())
                        .filter_map(|w| words.id(&w.to_lowercase()))
                        .collect()
                };
                let mut ids = known(&c.name);
                if ids.is_empty() {
                    ids = known(&c.synonyms);
                }
                let mut v = vec![0f32; words.dim()];
                for id in ids {
                    v.iter_mut().zip(words.unit(id)).for_each(|(o, x)| *o += x);
                }
                v
            })
            .collect(),
    };
    write_cache(&path, encoder.dim(), &data)?;
    Ok(data)
}

fn cache_path(models: &Path, encoder: &QueryEncoder, prompt: ClassPrompt) -> PathBuf {
    let (name, prompt) = match encoder {
        QueryEncoder::Sentences { encoder, .. } => (encoder.name(), prompt.tag()),
        QueryEncoder::Words(words) => (crate::text::EncoderId::of(words).name().to_owned(), "name"),
    };
    models.join("words-cache").join(format!("imagenet-classes-{name}-{}-{prompt}.f32", encoder.dim()))
}

const CACHE_MAGIC: &[u8; 8] = b"IMGSCLS1";

fn read_cache(path: &Path, dim: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    let classes = imagenet_classes().len();
    if bytes.len() != 16 + classes * dim * 4 || &bytes[..8] != CACHE_MAGIC {
        return None;
    }
    if u64::from_le_bytes(bytes[8..16].try_into().ok()?) != dim as u64 {
        return None;
    }
    Some(bytes[16..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect())
}

fn write_cache(path: &Path, dim: usize, data: &[f32]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut bytes = Vec::with_capacity(16 + data.len() * 4);
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&(dim as u64).to_le_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    crate::files::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conse_mixes_the_top_classes_texts_by_probability() {
        // 3 classes over 2-d embeddings; class texts along three axes.
        let weights = [1.0, 0.0, 0.0, 1.0, -1.0, -1.0];
        let bias = [0.0, 0.5, 0.0];
        let texts = [1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0];
        let zs = ZeroShot::with(&weights, &bias, &texts, 3, 2, 2.0).unwrap();
        let x = [2.0, 1.0];
        let got = zs.project(&x).unwrap();
        // By hand: logits (2, 1.5, -3) / 2, softmax, keep the top two.
        let l = [1.0f32, 0.75, -1.5];
        let z: f32 = l.iter().map(|v| v.exp()).sum();
        let want = [l[0].exp() / z, l[1].exp() / z, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        let p = zs.class_probabilities(&x).unwrap();
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5 && p[0] > p[1] && p[1] > p[2]);
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        assert!(ZeroShot::new(&[1.0; 6], &[0.0; 3], &[1.0; 5], 2).is_err());
    }
}
