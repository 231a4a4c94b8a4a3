//! Images in, CNN embeddings out: decoding and preprocessing, the
//! EfficientNet-Lite backbone, its checkpoint reader and the batched,
//! overlapped embedding pipeline.

mod amx;
mod centre;
pub mod checkpoint;
mod classes;
mod efficientnet;
mod embedder;
mod heif;
mod int8;
pub mod kernels;
mod packed;
mod preprocess;
pub mod raw;

pub use centre::{centre, centre_for_rows, centre_in_place, fold_into_bias, recentre, EMBEDDING_VERSION};
pub use classes::{imagenet_classes, resolve_class, suggest_classes, ImageNetClass};
pub use efficientnet::{Backbone, BlockSpec, Config, EfficientNet, Features, Precision};
pub use embedder::{softmax, top_k, Embedded, Embedder};
pub use heif::is_heif;
pub use preprocess::{decode_rgb, jpeg_cut_short, Preprocess, DEFAULT_MAX_PIXELS};
