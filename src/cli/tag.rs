//! `imgsearch tag`: an image's nearest words and ImageNet classes.

use super::*;

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// The image: a file (embedded on the fly if not indexed) or an indexed key.
    #[arg(value_name = "FILE|KEY")]
    pub image: String,
    /// How many words.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Backbone network of the index.
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
    /// Word-vector file the model was trained with (default: GloVe 6B 50d).
    #[arg(long = "words", value_name = "FILE")]
    pub vectors: Option<PathBuf>,
    /// How the image is put into the text space: zero-shot (no training),
    /// trained (the joint model) or fused; default fused once a model is
    /// trained, else zero-shot.
    #[arg(long, value_enum)]
    pub text_side: Option<crate::joint::Side>,
    /// Print JSON (`{side, words: [{index, word, distance}], classes: [{index, name, probability}]}`).
    #[arg(long)]
    pub json: bool,
}

pub(super) fn tag(models_dir: &std::path::Path, db: &std::path::Path, a: TagArgs) -> anyhow::Result<()> {
    let mut library = open_library(models_dir, db, a.backbone, a.vectors.as_deref(), Access::Read)?;
    let space = library.text_space()?;
    let side = space.side(a.text_side)?;
    let embedding = library
        .image_embedding(&a.image, |path| Ok(load_embedder(models_dir, a.backbone)?.embed_file(path)?.embedding))?;
    let tags = space.tags(side, &embedding, a.k)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&tags)?);
    } else {
        println!("words ({side} text side):");
        for n in &tags.words {
            println!("{:>7}  {:<20} {:.4}", n.index, n.word, n.distance);
        }
        println!("ImageNet classes:");
        for c in &tags.classes {
            println!("{:>6.2}%  {:>4}  {}", c.probability * 100.0, c.index, c.name);
        }
    }
    Ok(())
}
