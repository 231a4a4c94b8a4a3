//! The API's request and response shapes (and their OpenAPI schemas).

use super::*;

// ---------------------------------------------------------------- schemas

/// An error: what was wrong and what to do.
#[derive(Serialize, ToSchema)]
pub struct ErrorOut {
    pub error: String,
}

#[derive(Serialize, ToSchema)]
pub struct ClassOut {
    pub index: usize,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct StatusOut {
    pub images: usize,
    pub backbone: String,
    pub words: String,
    /// The joint model's labels, if one is trained.
    pub joint_labels: Option<Vec<String>>,
    /// The text side searches and tags use by default (zero-shot until a model is trained).
    pub text_side: Option<Side>,
    pub hnsw: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ImageOut {
    pub key: i64,
    pub label: String,
    pub file: String,
    pub thumbnail: String,
    pub original: String,
    /// Where the file is on the server (only from `GET /api/images/{key}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A page of the collection, newest first.
#[derive(Serialize, ToSchema)]
pub struct ImagePage {
    pub images: Vec<ImageOut>,
    /// Pass as `cursor` (with the same `sort`) for the next page; absent on the last one.
    pub next_cursor: Option<String>,
    /// Images in the collection.
    pub total: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Images per page, 1-1000 (default 60).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `added` (default: most recently added first) or `date` (most recently taken first).
    pub sort: Option<crate::store::Sort>,
    /// Only images under this folder (a path on the server).
    pub under: Option<String>,
    /// Only images with this label.
    pub label: Option<String>,
    /// Only images taken on or after this date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`).
    pub after: Option<String>,
    /// Only images taken before this date.
    pub before: Option<String>,
    /// Only images whose camera make or model contains this.
    pub camera: Option<String>,
}

/// Search parameters (query string, or the fields of a multipart form).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// An indexed image's key.
    pub key: Option<i64>,
    /// Words or a sentence: `dog`, `cat sofa`, `cat -sofa`.
    pub text: Option<String>,
    /// An ImageNet class (index or name) to weight an image query by.
    pub class: Option<String>,
    /// How many results, 1-1000 (default 20).
    pub k: Option<usize>,
    /// Drop results farther than this (0-2).
    pub max_distance: Option<f32>,
    /// `cnn` (default for an image) or `joint`.
    pub space: Option<String>,
    /// Also tag the query image (nearest words and top ImageNet classes).
    pub tags: Option<bool>,
    /// `zero-shot`, `trained` or `fused` (default: fused once a model is trained, else zero-shot).
    pub text_side: Option<String>,
    /// Only images under this folder (a path on the server).
    pub under: Option<String>,
    /// Only images with this label (their folder's name).
    pub label: Option<String>,
    /// Only images taken on or after this date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`).
    pub after: Option<String>,
    /// Only images taken before this date.
    pub before: Option<String>,
    /// Only images whose camera make or model contains this.
    pub camera: Option<String>,
}

impl SearchParams {
    /// The filter these parameters say.
    pub fn filter(&self) -> crate::Result<crate::store::Filter> {
        crate::query::filter(
            self.under.clone(),
            self.label.as_deref(),
            self.after.as_deref(),
            self.before.as_deref(),
            self.camera.as_deref(),
        )
    }
}

/// `POST /api/search`: an uploaded image and the fields of [`SearchParams`].
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct SearchForm {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    text: Option<String>,
    class: Option<String>,
    k: Option<usize>,
    max_distance: Option<f32>,
    space: Option<String>,
    tags: Option<bool>,
    text_side: Option<String>,
    under: Option<String>,
    label: Option<String>,
    after: Option<String>,
    before: Option<String>,
    camera: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TagParams {
    pub key: Option<i64>,
    /// How many words, 1-1000 (default 10).
    pub k: Option<usize>,
    /// `zero-shot`, `trained` or `fused` (default: fused once a model is trained, else zero-shot).
    pub text_side: Option<String>,
}

#[allow(dead_code)]
#[derive(ToSchema)]
pub struct TagForm {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    k: Option<usize>,
    text_side: Option<String>,
}

/// `POST /api/images`: the image, and the label (folder) to file it under.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct AddForm {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    label: Option<String>,
}

/// A file on the server, under one of the indexed folders.
#[derive(Deserialize, ToSchema)]
pub struct AddByPath {
    pub path: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WordParams {
    /// Words: `said`, `king -man woman`.
    pub q: String,
    pub k: Option<usize>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClassParams {
    /// What is typed so far.
    pub q: String,
    pub n: Option<usize>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DuplicateParams {
    /// Images within this distance of each other are copies (default: the measured one).
    pub max_distance: Option<f32>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Also delete the image's file from disk (only a file under a folder
    /// this server serves; anything else is refused and left alone).
    pub delete_file: Option<bool>,
}

/// An image of a group of near-duplicates.
#[derive(Serialize, ToSchema)]
pub struct DuplicateOut {
    #[serde(flatten)]
    pub image: ImageOut,
    /// The file's size in bytes.
    pub size: u64,
    /// Distance to the nearest other image of the group.
    pub distance: f32,
}

/// Images that are copies of one another, the earliest added first.
#[derive(Serialize, ToSchema)]
pub struct DuplicateGroup {
    /// Bytes the copies take beyond the first image.
    pub redundant_bytes: u64,
    pub images: Vec<DuplicateOut>,
}

#[derive(Serialize, ToSchema)]
pub struct DuplicatesOut {
    pub max_distance: f32,
    /// Bytes all copies take beyond each group's first image.
    pub redundant_bytes: u64,
    /// Largest first.
    pub groups: Vec<DuplicateGroup>,
}

/// Thumbnail sizes (longest side, pixels): 256 for the grid, 512 for HiDPI screens.
pub(super) const THUMB_SIZES: [u32; 2] = [THUMB_SIZE, 2 * THUMB_SIZE];

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThumbParams {
    /// Longest side in pixels: 256 (default) or 512.
    pub size: Option<u32>,
}
