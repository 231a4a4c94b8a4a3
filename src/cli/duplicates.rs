//! `imgsearch duplicates`: groups of near-duplicate images (re-encoded,
//! resized or cropped copies), to find what fills the disk.

use super::*;

#[derive(Debug, clap::Args)]
pub struct DuplicatesArgs {
    /// Images within this distance (`sqrt(2 - 2 cos)`) of each other are
    /// copies; the default is measured by `imgsearch eval` for each
    /// backbone (Lite0 0.65, Lite2 0.55).
    #[arg(long)]
    pub max_distance: Option<f32>,
    /// Backbone network of the index.
    #[arg(long, value_enum, default_value_t)]
    pub backbone: Backbone,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One group as the CLI prints it (the API's shape, with paths).
#[derive(Debug, Serialize)]
pub(super) struct GroupOut {
    /// Bytes the copies take beyond the first image.
    redundant_bytes: u64,
    images: Vec<MemberOut>,
}

#[derive(Debug, Serialize)]
pub(super) struct MemberOut {
    key: i64,
    label: String,
    file: String,
    path: String,
    size: u64,
    /// Distance to the nearest other image of the group.
    distance: f32,
}

pub(super) fn duplicates(models_dir: &std::path::Path, db: &std::path::Path, a: DuplicatesArgs) -> anyhow::Result<()> {
    let max_distance = a.max_distance.unwrap_or(crate::duplicates::default_max_distance(a.backbone));
    anyhow::ensure!(
        (0.0..=2.0).contains(&max_distance),
        "--max-distance must be between 0 and 2 (angular distance), got {max_distance}"
    );
    let library = open_library(models_dir, db, a.backbone, None, Access::Read)?;
    let groups = crate::duplicates::groups(library.store(), max_distance)?;
    let out: Vec<GroupOut> = groups
        .iter()
        .map(|g| GroupOut {
            redundant_bytes: g.redundant_bytes(),
            images: g
                .members
                .iter()
                .map(|m| {
                    let path = crate::files::display_path(&m.image.path);
                    let file = crate::files::display_file_name(&m.image.path);
                    MemberOut {
                        key: m.image.key,
                        label: m.image.label.clone(),
                        file,
                        path,
                        size: m.image.size,
                        distance: m.distance,
                    }
                })
                .collect(),
        })
        .collect();
    if a.json {
        let total: u64 = out.iter().map(|g| g.redundant_bytes).sum();
        let answer = serde_json::json!({ "max_distance": a.max_distance, "redundant_bytes": total, "groups": out });
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    for (i, g) in out.iter().enumerate() {
        println!("group {} ({} images, {:.1} MB in copies)", i + 1, g.images.len(), g.redundant_bytes as f64 / 1e6);
        for m in &g.images {
            println!("  {:>6}  {:.4}  {:>10}  {}", m.key, m.distance, m.size, m.path);
        }
    }
    let total: u64 = out.iter().map(|g| g.redundant_bytes).sum();
    println!(
        "{} groups, {:.1} MB in copies (max distance {}); `imgsearch` never deletes files itself",
        out.len(),
        total as f64 / 1e6,
        max_distance
    );
    Ok(())
}
