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

/// Share of `rows` whose most similar (cosine) label vector is their label `truth[i]`.
pub fn nearest_label_accuracy(rows: &[&[f32]], truth: &[usize], labels: &[&[f32]]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    let hits = rows
        .iter()
        .zip(truth)
        .filter(|(r, &t)| {
            let best = (0..labels.len()).max_by(|&a, &b| cosine(r, labels[a]).total_cmp(&cosine(r, labels[b])));
            best == Some(t)
        })
        .count();
    hits as f64 / rows.len() as f64
}

/// For each label vector: the share of the `k` rows most similar to it
/// (cosine) whose label (`truth`) is that label.
pub fn word_precision_at_k(rows: &[&[f32]], truth: &[usize], labels: &[&[f32]], k: usize) -> Vec<f64> {
    labels
        .iter()
        .enumerate()
        .map(|(l, v)| {
            let mut order: Vec<(f32, usize)> = rows.iter().enumerate().map(|(i, r)| (cosine(r, v), i)).collect();
            order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let top = order.iter().take(k);
            top.filter(|&&(_, i)| truth[i] == l).count() as f64 / k as f64
        })
        .collect()
}

/// Cosine similarity (0 when either side is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let (na, nb) = (crate::vector::norm(a), crate::vector::norm(b));
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
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
        let images = vec![("a", vec![1.0, 0.0]), ("a", vec![0.9, 0.1]), ("b", vec![0.8, 0.2]), ("b", vec![0.0, 1.0])];
        // k=1: a0->a1 yes, a1->a0 yes, b2->a1 no, b3->b2 yes.
        assert_eq!(image_precision_at_k(&images, 1), 0.75);
    }

    #[test]
    fn nearest_label_and_word_precision() {
        let labels: [&[f32]; 2] = [&[1.0, 0.0], &[0.0, 1.0]];
        let rows: [&[f32]; 3] = [&[2.0, 0.1], &[0.3, 1.0], &[1.0, 0.9]];
        // Row 2 is nearer label 0 but is labelled 1.
        assert!((nearest_label_accuracy(&rows, &[0, 1, 1], &labels) - 2.0 / 3.0).abs() < 1e-9);
        // k=1: label 0's nearest row is row 0 (label 0); label 1's is row 1 (label 1).
        assert_eq!(word_precision_at_k(&rows, &[0, 1, 1], &labels, 1), [1.0, 1.0]);
        // k=2: label 0's two nearest are rows 0 and 2 -> one of two is label 0.
        assert_eq!(word_precision_at_k(&rows, &[0, 1, 1], &labels, 2), [0.5, 1.0]);
    }
}
