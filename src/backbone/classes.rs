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
}
