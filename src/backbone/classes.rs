//! The 1000 ImageNet class names, in the order of the classifier layer,
//! shipped with the binary (from `assets/imagenet_classes.tsv`).

use std::sync::OnceLock;

const CLASSES_TSV: &str = include_str!("../../assets/imagenet_classes.tsv");

/// One ImageNet class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageNetClass {
    pub index: usize,
    /// A short readable name ("Siamese cat").
    pub name: String,
    /// The WordNet synonyms ("Siamese cat, Siamese").
    pub synonyms: String,
}

/// All 1000 classes, index = classifier row.
pub fn imagenet_classes() -> &'static [ImageNetClass] {
    static CLASSES: OnceLock<Vec<ImageNetClass>> = OnceLock::new();
    CLASSES.get_or_init(|| {
        CLASSES_TSV
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let mut cols = line.split('\t');
                let index = cols.next().and_then(|i| i.parse().ok()).expect("classes.tsv: bad index");
                let name = cols.next().expect("classes.tsv: missing name").to_owned();
                let synonyms = cols.next().unwrap_or("").to_owned();
                ImageNetClass { index, name, synonyms }
            })
            .collect()
    })
}

impl ImageNetClass {
    /// The name and every synonym, lower case.
    fn names(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.name.to_lowercase()).chain(self.synonyms.split(',').map(|s| s.trim().to_lowercase()))
    }
}

/// Resolves a class given as an index (`284`) or a name or synonym
/// (`Siamese cat`, case-insensitive); an unknown name is an error with the
/// closest names.
pub fn resolve_class(spec: &str) -> crate::Result<usize> {
    let classes = imagenet_classes();
    if let Ok(i) = spec.trim().parse::<usize>() {
        if i < classes.len() {
            return Ok(i);
        }
        return Err(crate::Error::UnknownClass {
            spec: spec.to_owned(),
            suggestions: "ImageNet classes are 0-999".into(),
        });
    }
    let want = spec.trim().to_lowercase();
    if let Some(c) = classes.iter().find(|c| c.names().any(|n| n == want)) {
        return Ok(c.index);
    }
    let suggestions: Vec<String> =
        suggest_classes(&want, 5).iter().map(|&i| format!("{i} \"{}\"", classes[i].name)).collect();
    Err(crate::Error::UnknownClass {
        spec: spec.to_owned(),
        suggestions: format!("did you mean: {}?", suggestions.join(", ")),
    })
}

/// Up to `n` classes for what someone is typing: names containing the
/// text first (those starting with it before others), then the closest by edit distance.
pub fn suggest_classes(text: &str, n: usize) -> Vec<usize> {
    let want = text.trim().to_lowercase();
    let mut scored: Vec<(usize, usize)> = imagenet_classes()
        .iter()
        .map(|c| {
            let d = c
                .names()
                .map(|name| {
                    if name.starts_with(&want) {
                        0
                    } else if name.contains(&want) {
                        1
                    } else {
                        2 + crate::spelling::edit_distance(&want, &name)
                    }
                })
                .min()
                .unwrap_or(usize::MAX);
            (d, c.index)
        })
        .collect();
    scored.sort();
    scored.into_iter().take(n).map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_complete_and_in_classifier_order() {
        let classes = imagenet_classes();
        assert_eq!(classes.len(), 1000);
        assert!(classes.iter().enumerate().all(|(i, c)| c.index == i));
        assert_eq!(classes[284].name, "Siamese cat");
    }

    #[test]
    fn classes_resolve_by_index_name_or_synonym_and_suggest() {
        assert_eq!(resolve_class("284").unwrap(), 284);
        assert_eq!(resolve_class("siamese CAT").unwrap(), 284);
        assert!(resolve_class("1000").is_err());
        let e = resolve_class("siamse kat").unwrap_err().to_string();
        assert!(e.contains("Siamese cat"), "{e}");
        assert_eq!(imagenet_classes()[suggest_classes("siam", 1)[0]].name, "Siamese cat");
    }
}
