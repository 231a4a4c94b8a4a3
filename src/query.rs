//! Running a search over the store: the query vector (CNN space, class
//! weighted, or joint space), the index to scan, and the results with their
//! records. Shared by the CLI and the HTTP service.

use serde::Serialize;

use crate::store::{Filter, ImageStore, StoreQuery};
use crate::Result;

/// What to search with.
#[derive(Debug, Clone)]
pub enum Query {
    /// A CNN embedding (any length: the cosine ignores it).
    Cnn(Vec<f32>),
    /// A CNN embedding, with the query and every stored vector multiplied
    /// by these weights (one ImageNet class's classifier row).
    Weighted { embedding: Vec<f32>, weights: Vec<f32> },
    /// A vector in the joint image-word space.
    Joint(Vec<f32>),
}

/// One result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Found {
    pub rank: usize,
    pub key: i64,
    pub path: String,
    pub label: String,
    /// Angular distance `sqrt(2 - 2 cos)`: 0 same direction, 2 opposite.
    pub distance: f32,
}

/// Where a query is compared: the CNN's embeddings, or the text space
/// (images and text side by side: the joint space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    /// The CNN's embeddings.
    Cnn,
    /// The text space (the joint image-text space).
    Joint,
}

impl Space {
    pub fn as_str(self) -> &'static str {
        match self {
            Space::Cnn => "cnn",
            Space::Joint => "joint",
        }
    }
}

/// What a search is made of, as the CLI's flags and the API's parameters
/// both describe it: the rules of which parts go together, written once.
/// Checked before anything is loaded, so a bad combination costs nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts {
    /// A query image (an indexed key, a file or an upload).
    pub image: bool,
    /// Query text.
    pub text: bool,
    /// An ImageNet class to weight the image query by.
    pub class: bool,
    /// The space asked for, if any.
    pub space: Option<Space>,
}

impl Parts {
    /// The space the search runs in: the one asked for, else the text space
    /// when there is text, else the CNN's. Image and text together add up
    /// in the text space.
    pub fn space(&self) -> Result<Space> {
        if !self.image && !self.text {
            return Err(crate::Error::BadQuery(
                "empty query: give text, an image (an indexed key, a file or an upload), or both".into(),
            ));
        }
        let space = match self.space {
            None if self.text => Space::Joint,
            None => Space::Cnn,
            Some(Space::Cnn) if self.text => {
                return Err(crate::Error::BadQuery(
                    "text is searched in the text space: drop the CNN space (space=cnn, --space cnn)".into(),
                ))
            }
            Some(s) => s,
        };
        if self.class && space == Space::Joint {
            return Err(crate::Error::BadQuery(
                "a class reweights CNN embeddings: it does not combine with text or the joint space".into(),
            ));
        }
        Ok(space)
    }
}

/// A filter from what the CLI's flags and the API's parameters say: a
/// folder (a stored path), a label, dates (`YYYY`, `YYYY-MM`,
/// `YYYY-MM-DD`; `after` from the start of that period, `before` up to its
/// start), a camera. Empty texts count as not given.
pub fn filter(
    under: Option<String>,
    label: Option<&str>,
    after: Option<&str>,
    before: Option<&str>,
    camera: Option<&str>,
) -> Result<Filter> {
    let given = |t: Option<&str>| t.map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
    let after = given(after).map(|d| crate::metadata::parse_date(&d)).transpose()?.map(|(start, _)| start);
    let before = given(before).map(|d| crate::metadata::parse_date(&d)).transpose()?.map(|(start, _)| start);
    if let (Some(a), Some(b)) = (after, before) {
        if a >= b {
            return Err(crate::Error::BadQuery(
                "the after date is not before the before date: nothing can match".into(),
            ));
        }
    }
    Ok(Filter { under: given(under.as_deref()), label: given(label), after, before, camera: given(camera) })
}

/// A query ready to run, with the space and text side it is in.
pub struct Assembled {
    pub query: Query,
    pub space: Space,
    /// The text side images were put into the text space with (joint space only).
    pub side: Option<crate::joint::Side>,
    /// Set when the text was longer than the encoder reads and was cut.
    pub note: Option<String>,
}

/// Assembles a query from its parts (checked by [`Parts::space`]): the
/// image's raw CNN embedding, the text, a class's weights, the side asked
/// for; `text` is the store's text space (needed in the joint space).
pub fn assemble(
    space: Space,
    image: Option<Vec<f32>>,
    text: Option<&str>,
    class_weights: Option<Vec<f32>>,
    side: Option<crate::joint::Side>,
    text_space: Option<&crate::joint::TextSpace>,
) -> Result<Assembled> {
    match (space, image, class_weights) {
        (Space::Cnn, Some(embedding), Some(weights)) => {
            Ok(Assembled { query: Query::Weighted { embedding, weights }, space, side: None, note: None })
        }
        (Space::Cnn, Some(embedding), None) => {
            Ok(Assembled { query: Query::Cnn(embedding), space, side: None, note: None })
        }
        (Space::Cnn, None, _) => Err(crate::Error::BadQuery("the CNN space needs a query image".into())),
        (Space::Joint, image, _) => {
            let ts = text_space.ok_or_else(|| crate::Error::Msg("the text space is not loaded".into()))?;
            let side = ts.side(side)?;
            let mut q = vec![0f32; ts.encoder.dim()];
            if let Some(image) = image {
                q.iter_mut().zip(ts.project(side, &image)?).for_each(|(a, b)| *a += b);
            }
            let mut note = None;
            if let Some(t) = text {
                let (v, cut) = ts.encoder.query(t)?;
                q.iter_mut().zip(unit(&v)).for_each(|(a, b)| *a += b);
                note = cut.then(|| {
                    format!(
                        "the text is longer than the model's {} tokens; the rest was ignored",
                        crate::text::MAX_TOKENS
                    )
                });
            }
            Ok(Assembled { query: Query::Joint(q), space, side: Some(side), note })
        }
    }
}

/// One result, as the CLI (`--json`) and the API both give it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Hit {
    pub rank: usize,
    pub key: i64,
    /// The image's folder name.
    pub label: String,
    /// The file's name.
    pub file: String,
    /// Where the file is (the CLI; the service keeps paths on the server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Distance `sqrt(2 - 2 cos)` ([`crate::vector::distance`]).
    pub distance: f32,
    /// The thumbnail's URL (the service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
    /// The original's URL (the service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
}

/// A search's answer, as the CLI (`--json`) and the API both give it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SearchAnswer {
    pub space: Space,
    /// In the text space: how images were put into it (`zero-shot`, `trained`, `fused`).
    pub text_side: Option<crate::joint::Side>,
    /// On the fused side: the weight of the zero-shot side (the trained one has the rest).
    pub fusion_weight: Option<f32>,
    pub results: Vec<Hit>,
    /// Set when the text was longer than the sentence encoder's limit and was cut.
    pub note: Option<String>,
    /// The query image's tags, when asked for.
    pub tags: Option<crate::joint::space::Tags>,
}

impl SearchAnswer {
    /// The answer for `found`; `hit` fills in what the caller shows of each
    /// (the CLI its path, the service its URLs).
    pub fn new(assembled: &Assembled, found: Vec<Found>, hit: impl Fn(&Found) -> Hit) -> Self {
        let fusion_weight =
            (assembled.side == Some(crate::joint::Side::Fused)).then_some(crate::joint::space::FUSION_WEIGHT);
        SearchAnswer {
            space: assembled.space,
            text_side: assembled.side,
            fusion_weight,
            results: found.iter().map(hit).collect(),
            note: assembled.note.clone(),
            tags: None,
        }
    }
}

impl Found {
    /// The file's name (of a stored path).
    pub fn file(&self) -> String {
        crate::files::display_file_name(&self.path)
    }

    /// The result with its path, as the CLI shows it.
    pub fn hit_with_path(&self) -> Hit {
        Hit {
            rank: self.rank,
            key: self.key,
            label: self.label.clone(),
            file: self.file(),
            path: Some(crate::files::display_path(&self.path)),
            distance: self.distance,
            thumbnail: None,
            original: None,
        }
    }
}

/// The `k` nearest images to `assembled`'s query in `store`, nearest
/// first, farther than `max_distance` dropped. `text` is the text space the
/// query was assembled with (needed in the joint space). The store searches
/// where its vectors are: its own index (a folder's HNSW graph once it
/// covers every row, a database's) or an exact scan.
pub fn search(
    store: &dyn ImageStore,
    text: Option<&crate::joint::TextSpace>,
    assembled: &Assembled,
    k: usize,
    max_distance: Option<f32>,
    filter: &Filter,
) -> Result<Vec<Found>> {
    let hits = match &assembled.query {
        Query::Cnn(q) => store.search(&StoreQuery::Cnn(q), k, filter)?,
        Query::Weighted { embedding, weights } => {
            store.search(&StoreQuery::Weighted { embedding, weights }, k, filter)?
        }
        Query::Joint(q) => {
            let text = text.ok_or_else(|| crate::Error::Msg("the text space is not loaded".into()))?;
            let projection = text.projection(assembled.side.unwrap_or(text.default_side()))?;
            store.search(&StoreQuery::Text { side: projection.store_side(), vector: q }, k, filter)?
        }
    };
    let results =
        hits.into_iter().map(|(r, distance)| Found { rank: 0, key: r.key, path: r.path, label: r.label, distance });
    Ok(ranked(results, k, max_distance))
}

/// The first `k` within `max_distance`, ranked from 1.
fn ranked(results: impl Iterator<Item = Found>, k: usize, max_distance: Option<f32>) -> Vec<Found> {
    results
        .filter(|r| max_distance.is_none_or(|m| r.distance <= m))
        .take(k)
        .enumerate()
        .map(|(i, r)| Found { rank: i + 1, ..r })
        .collect()
}

pub use crate::vector::unit;
