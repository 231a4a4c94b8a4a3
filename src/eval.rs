//! The metrics every quality figure comes from.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A labelled image collection: `<root>/<label>/<file>`.
#[derive(Debug, Clone)]
pub struct LabelledImages {
    pub items: Vec<(PathBuf, String)>,
}

impl LabelledImages {
    /// Reads `<root>/<label>/<file>` (one level of label folders), sorted by path.
    pub fn read(root: &Path) -> Result<Self> {
        let mut items = Vec::new();
        let labels = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
        for label in labels {
            let label = label.map_err(|e| Error::io(root, e))?.path();
            if !label.is_dir() {
                continue;
            }
            let name = label.file_name().unwrap_or_default().to_string_lossy().into_owned();
            for file in std::fs::read_dir(&label).map_err(|e| Error::io(&label, e))? {
                let file = file.map_err(|e| Error::io(&label, e))?.path();
                if file.is_file() {
                    items.push((file, name.clone()));
                }
            }
        }
        items.sort();
        Ok(Self { items })
    }
}

/// Fraction of `predictions` (each a top-k class list) holding a class in `range`.
pub fn top_k_hit_rate(predictions: &[Vec<usize>], range: std::ops::RangeInclusive<usize>) -> f64 {
    if predictions.is_empty() {
        return 0.0;
    }
    let hits = predictions.iter().filter(|p| p.iter().any(|c| range.contains(c))).count();
    hits as f64 / predictions.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_counts_any_class_in_range() {
        let preds = vec![vec![1, 282], vec![5, 6], vec![285, 0], vec![9]];
        assert_eq!(top_k_hit_rate(&preds, 281..=285), 0.5);
        assert_eq!(top_k_hit_rate(&[], 281..=285), 0.0);
    }
}
