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

/// Mean precision@k of image->image search: for every image, the share of
/// its `k` nearest others (exact search, the query itself excluded) with its label.
pub fn image_precision_at_k(images: &[(&str, Vec<f32>)], k: usize) -> f64 {
    use crate::index::{ExactIndex, VectorIndex};
    if images.len() < 2 {
        return 0.0;
    }
    let dim = images[0].1.len();
    let unit: Vec<f32> = images
        .iter()
        .flat_map(|(_, e)| {
            let n = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            e.iter().map(move |v| v / n)
        })
        .collect();
    let index = ExactIndex::new(&unit, dim);
    let total: f64 = images
        .iter()
        .enumerate()
        .map(|(i, (label, _))| {
            let hits = index.search(&unit[i * dim..(i + 1) * dim], k + 1);
            let others: Vec<_> = hits.iter().filter(|h| h.id != i).take(k).collect();
            others.iter().filter(|h| images[h.id].0 == *label).count() as f64 / k as f64
        })
        .sum();
    total / images.len() as f64
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

    #[test]
    fn precision_at_k_excludes_the_query_and_counts_label_matches() {
        let images = vec![
            ("a", vec![1.0, 0.0]),
            ("a", vec![0.9, 0.1]),
            ("b", vec![0.8, 0.2]),
            ("b", vec![0.0, 1.0]),
        ];
        // k=1: a0->a1 yes, a1->a0 yes, b2->a1 no, b3->b2 yes.
        assert_eq!(image_precision_at_k(&images, 1), 0.75);
    }
}
