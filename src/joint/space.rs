//! The text side every text search and tag goes through, for the CLI and the
//! service alike: a [`Side`] picks how images are put into the text space —
//! zero-shot (ConSE over the ImageNet classifier: always there, no
//! training), trained (the joint model), or the two fused — and
//! [`TextSpace`] holds what each side needs: the query encoder, the
//! zero-shot side and, once `train` has run, the joint model.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::zeroshot::ZeroShot;
use super::{JointModel, Projection};
use crate::backbone::Config;
use crate::text::EncoderId;
use crate::text::QueryEncoder;
use crate::{Error, Result};

/// Weight of the zero-shot side in the fused one (the trained side gets the
/// rest). Chosen by `eval` on the Pascal split: see README figures.
pub const FUSION_WEIGHT: f32 = 0.35;

/// How images are put into the text space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// ConSE over the ImageNet classifier: no training needed.
    ZeroShot,
    /// The joint model trained by `imgsearch train`.
    Trained,
    /// Zero-shot and trained, each unit length, mixed by [`FUSION_WEIGHT`].
    Fused,
}

impl Side {
    pub const ALL: [Side; 3] = [Side::ZeroShot, Side::Trained, Side::Fused];

    pub fn name(self) -> &'static str {
        match self {
            Self::ZeroShot => "zero-shot",
            Self::Trained => "trained",
            Self::Fused => "fused",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Side {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|side| side.name() == s.trim())
            .ok_or_else(|| Error::Msg(format!("unknown text side \"{s}\": use one of zero-shot, trained, fused")))
    }
}

/// The query encoder and the image sides of one store.
pub struct TextSpace {
    pub encoder: QueryEncoder,
    pub zero_shot: ZeroShot,
    /// The current joint model and its database id (0 for a folder's).
    pub trained: Option<(i64, JointModel)>,
}

impl TextSpace {
    /// The text space for a store whose current model is `trained` (if
    /// any): the model's own encoder, else the sentence encoder.
    pub fn load(
        models: &Path,
        backbone: &Config,
        trained: Option<(i64, JointModel)>,
        words_file: Option<&Path>,
    ) -> Result<Self> {
        let encoder = match &trained {
            Some((_, model)) => QueryEncoder::for_model(models, &model.info.words, words_file)?,
            None => QueryEncoder::sentences(models, words_file)?,
        };
        let zero_shot = ZeroShot::load(models, backbone, &encoder)?;
        Ok(Self { encoder, zero_shot, trained })
    }

    /// The text space of `store`: its current joint model if one was
    /// trained (refused if trained on another backbone), for the CLI and
    /// the service alike.
    pub fn of_store(
        models: &Path,
        store: &dyn crate::store::ImageStore,
        backbone: crate::backbone::Backbone,
        words_file: Option<&Path>,
    ) -> Result<Self> {
        let trained = JointModel::load_current(store)?;
        if let Some((_, model)) = &trained {
            model.check_compatible(backbone.name(), &model.info.words.clone())?;
        }
        Self::load(models, &backbone.config(), trained, words_file)
    }

    /// The side used when none is asked for: fused once a model is trained.
    pub fn default_side(&self) -> Side {
        if self.trained.is_some() {
            Side::Fused
        } else {
            Side::ZeroShot
        }
    }

    /// `requested`, or the default; a side that needs a model without one
    /// says how to train it.
    pub fn side(&self, requested: Option<Side>) -> Result<Side> {
        match requested {
            None => Ok(self.default_side()),
            Some(s @ (Side::Trained | Side::Fused)) if self.trained.is_none() => {
                Err(Error::SideNeedsModel { side: s.to_string() })
            }
            Some(s) => Ok(s),
        }
    }

    /// The sides this space can answer: zero-shot, and trained and fused once a model exists.
    pub fn sides(&self) -> Vec<Side> {
        Side::ALL.into_iter().filter(|&s| self.side(Some(s)).is_ok()).collect()
    }

    /// Brings `side`'s image vectors on `store` up to date (every image,
    /// or only `hashes` where the store can tell); returns the rows added.
    pub fn sync(&self, side: Side, store: &dyn crate::store::ImageStore, hashes: Option<&[String]>) -> Result<usize> {
        let projection = self.projection(side)?;
        store.sync_text_side(&projection.store_side(), hashes)
    }

    /// The model id searches in the database use for `side`.
    pub fn model_id(&self) -> Option<i64> {
        self.trained.as_ref().map(|(id, _)| *id)
    }

    /// What the encoder is (recorded with results).
    pub fn encoder_id(&self) -> EncoderId {
        self.encoder.id()
    }

    /// The projection of `side` (unit rows).
    pub fn projection(&self, side: Side) -> Result<SideProjection<'_>> {
        let side = self.side(Some(side))?;
        Ok(SideProjection { space: self, side })
    }

    /// Raw CNN embeddings into `side`'s text space, unit rows.
    pub fn project(&self, side: Side, embeddings: &[f32]) -> Result<Vec<f32>> {
        self.projection(side)?.project(embeddings)
    }
}

/// One side of a [`TextSpace`] as a [`Projection`] (unit rows).
pub struct SideProjection<'a> {
    space: &'a TextSpace,
    side: Side,
}

impl SideProjection<'_> {
    pub fn side(&self) -> Side {
        self.side
    }

    /// The side as a store keeps it: its name, the model it belongs to, this projection.
    pub fn store_side(&self) -> crate::store::TextSide<'_> {
        let model_id = match self.side {
            Side::Trained => self.space.model_id(),
            _ => None,
        };
        crate::store::TextSide { name: self.side.name(), model_id, projection: self }
    }

    fn trained(&self) -> &JointModel {
        &self.space.trained.as_ref().expect("checked by TextSpace::side").1
    }
}

/// Each row of `v` (`dim` wide) scaled to unit length, in place (zero stays zero).
fn unit_rows(v: &mut [f32], dim: usize) {
    for row in v.chunks_exact_mut(dim) {
        crate::vector::normalize(row);
    }
}

impl Projection for SideProjection<'_> {
    fn in_dim(&self) -> usize {
        self.space.zero_shot.in_dim()
    }

    fn out_dim(&self) -> usize {
        self.space.zero_shot.out_dim()
    }

    fn fingerprint(&self) -> [u8; 16] {
        let zs = self.space.zero_shot.fingerprint();
        match self.side {
            Side::ZeroShot => zs,
            Side::Trained => self.trained().fingerprint(),
            Side::Fused => {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                h.update(zs);
                h.update(self.trained().fingerprint());
                h.update(FUSION_WEIGHT.to_le_bytes());
                h.finalize()[..16].try_into().expect("16 bytes")
            }
        }
    }

    fn project(&self, embeddings: &[f32]) -> Result<Vec<f32>> {
        let dim = self.out_dim();
        let mut out = match self.side {
            Side::ZeroShot => self.space.zero_shot.project(embeddings)?,
            Side::Trained => self.trained().project(embeddings)?,
            Side::Fused => {
                let (zs, tr) = (self.space.zero_shot.project(embeddings)?, self.trained().project(embeddings)?);
                return Ok(fuse(&zs, &tr, dim, FUSION_WEIGHT));
            }
        };
        unit_rows(&mut out, dim);
        Ok(out)
    }
}

/// Fuses unit zero-shot and trained rows with weight `w` on zero-shot (for `eval`'s sweep).
pub fn fuse(zero_shot: &[f32], trained: &[f32], dim: usize, w: f32) -> Vec<f32> {
    let (mut z, mut t) = (zero_shot.to_vec(), trained.to_vec());
    unit_rows(&mut z, dim);
    unit_rows(&mut t, dim);
    let mut out: Vec<f32> = z.iter().zip(&t).map(|(a, b)| w * a + (1.0 - w) * b).collect();
    unit_rows(&mut out, dim);
    out
}

/// A word an image is tagged with.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TagWord {
    /// The word's index in the tag vocabulary.
    pub index: usize,
    pub word: String,
    /// Distance between the word and the image in the text space, `sqrt(2 - 2 cos)`.
    pub distance: f32,
}

/// An ImageNet class the backbone sees in an image.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TagClass {
    pub index: usize,
    pub name: String,
    /// Softmax probability (0-1).
    pub probability: f32,
}

/// What `tag` answers, in the CLI and the API.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tags {
    /// The text side the words came from.
    pub side: Side,
    /// The nearest words of the tag vocabulary, nearest first.
    pub words: Vec<TagWord>,
    /// The top ImageNet classes, most probable first.
    pub classes: Vec<TagClass>,
}

/// ImageNet classes shown with tags.
pub const TAG_CLASSES: usize = 5;

impl TextSpace {
    /// The `k` nearest words to a raw CNN embedding on `side`, and its top classes.
    pub fn tags(&self, side: Side, embedding: &[f32], k: usize) -> Result<Tags> {
        let side = self.side(Some(side))?;
        let projected = self.project(side, embedding)?;
        let words = self
            .encoder
            .tag_words()?
            .nearest(&projected, k)
            .into_iter()
            .map(|n| TagWord { index: n.id, word: n.word, distance: n.distance })
            .collect();
        let p = self.zero_shot.class_probabilities(embedding)?;
        let names = crate::backbone::imagenet_classes();
        let classes = crate::backbone::top_k(&p, TAG_CLASSES)
            .into_iter()
            .map(|i| TagClass { index: i, name: names[i].name.clone(), probability: p[i] })
            .collect();
        Ok(Tags { side, words, classes })
    }
}
