//! `imgsearch words`: nearest words by word vectors.

use super::*;

#[derive(Debug, clap::Args)]
pub struct WordsArgs {
    /// Query words (several are averaged; `_` also separates words). A word
    /// to subtract goes inside quotes or after `--`: `"king -man woman"`.
    #[arg(required = true, value_name = "WORD")]
    pub query: Vec<String>,
    /// How many neighbours.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Print JSON (`[{"word": ..., "distance": ...}, ...]`) instead of text.
    #[arg(long)]
    pub json: bool,
    /// A word-vector file (GloVe text, word2vec text/binary, or .wv), converted
    /// once and cached in the model directory; default: GloVe 6B 50d.
    #[arg(long = "words", visible_alias = "vectors", value_name = "FILE")]
    pub vectors: Option<PathBuf>,
}

pub(super) fn words(models_dir: &std::path::Path, a: WordsArgs) -> anyhow::Result<()> {
    let vectors = crate::words::open(models_dir, a.vectors.as_deref())?;
    let neighbours = vectors.nearest_to_text(&a.query.join(" "), a.k)?;
    if a.json {
        println!("{}", serde_json::to_string(&neighbours)?);
    } else {
        for n in &neighbours {
            println!("{:<20} {:.4}", n.word, n.distance);
        }
    }
    Ok(())
}
