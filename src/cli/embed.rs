//! `imgsearch embed`: embed and classify image files.

use super::*;

#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Backbone network.
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Refuse images with more pixels than this (checked before decoding).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Also print the embedding vector itself.
    #[arg(long)]
    pub vector: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct ClassScore {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) probability: f32,
}

#[derive(Debug, Serialize)]
pub(super) struct EmbedReport {
    pub(super) path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top5: Option<Vec<ClassScore>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) embedding: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
}

pub(super) fn embed(models_dir: &std::path::Path, a: EmbedArgs) -> anyhow::Result<()> {
    let embedder = load_embedder(models_dir, a.backbone)?.with_max_pixels(a.max_pixels);
    let classes = imagenet_classes();
    let mut reports: Vec<Option<EmbedReport>> = (0..a.images.len()).map(|_| None).collect();
    embedder.embed_files(&a.images, |i, result| {
        let path = a.images[i].clone();
        reports[i] = Some(match result {
            Ok(e) => {
                let probs = softmax(&e.logits);
                let top5 = top_k(&probs, 5)
                    .into_iter()
                    .map(|c| ClassScore { index: c, name: classes[c].name.clone(), probability: probs[c] })
                    .collect();
                EmbedReport {
                    path,
                    dim: Some(e.embedding.len()),
                    top5: Some(top5),
                    embedding: a.vector.then_some(e.embedding),
                    error: None,
                }
            }
            Err(err) => EmbedReport { path, dim: None, top5: None, embedding: None, error: Some(err.to_string()) },
        });
    });
    let reports: Vec<EmbedReport> = reports.into_iter().flatten().collect();
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            match (&r.error, &r.top5) {
                (Some(err), _) => eprintln!("skipped: {err}"),
                (None, Some(top5)) => {
                    println!("{}  (embedding: {} dims)", r.path.display(), r.dim.unwrap_or(0));
                    for c in top5 {
                        println!("  {:>6.2}%  {:>3}  {}", c.probability * 100.0, c.index, c.name);
                    }
                    if let Some(v) = &r.embedding {
                        println!("  {v:?}");
                    }
                }
                _ => {}
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images could not be embedded (see above)", reports.len());
    }
    Ok(())
}
