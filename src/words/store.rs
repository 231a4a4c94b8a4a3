//! The project's compact word-vector form, memory-mapped so that opening a
//! 400k-word vocabulary is a header read: nothing is parsed or built.
//!
//! Layout (little-endian; every section starts on a 64-byte boundary):
//! ```text
//! header   magic "IMGSWRD1", dim u32, reserved u32, count u64, then the
//!          byte offsets of: unit vectors, norms, sorted index, word offsets, text
//! unit     f32 [count, dim]   each vector divided by its norm (normalise once)
//! norms    f32 [count]        the original norms (raw = unit * norm)
//! sorted   u32 [count]        word ids ordered by their lowercased text
//! offsets  u64 [count + 1]    word i is text[offsets[i]..offsets[i+1]]
//! text     UTF-8 words, concatenated
//! ```
//! Ids keep the source file's order (GloVe: by frequency).

use crate::spelling::levenshtein;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::formats::RawVectors;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"IMGSWRD1";
const HEADER_LEN: usize = 64;

/// Word vectors opened from the compact form.
pub struct WordVectors {
    mmap: Mmap,
    path: PathBuf,
    dim: usize,
    count: usize,
    unit_at: usize,
    norms_at: usize,
    sorted_at: usize,
    offsets_at: usize,
    text_at: usize,
    /// The int8 copy search scans, made on first use.
    quantized: std::sync::OnceLock<super::search::Quantized>,
}

fn align64(n: usize) -> usize {
    n.div_ceil(64) * 64
}

/// Writes `raw` in the compact form, atomically (temporary file + rename).
pub fn write_compact(raw: &RawVectors, path: &Path) -> Result<()> {
    let count = raw.words.len();
    let dim = raw.dim;
    let unit_at = align64(HEADER_LEN);
    let norms_at = align64(unit_at + count * dim * 4);
    let sorted_at = align64(norms_at + count * 4);
    let offsets_at = align64(sorted_at + count * 4);
    let text_at = align64(offsets_at + (count + 1) * 8);

    let mut out = Vec::with_capacity(text_at + raw.words.iter().map(String::len).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(count as u64).to_le_bytes());
    for at in [unit_at, norms_at, sorted_at, offsets_at, text_at] {
        out.extend_from_slice(&(at as u64).to_le_bytes());
    }
    out.resize(unit_at, 0);
    let mut norms = Vec::with_capacity(count);
    for row in raw.data.chunks_exact(dim) {
        let mut unit = row.to_vec();
        norms.push(crate::vector::normalize(&mut unit));
        unit.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
    out.resize(norms_at, 0);
    norms.iter().for_each(|n| out.extend_from_slice(&n.to_le_bytes()));
    out.resize(sorted_at, 0);
    let lower: Vec<String> = raw.words.iter().map(|w| w.to_lowercase()).collect();
    let mut sorted: Vec<u32> = (0..count as u32).collect();
    sorted.sort_by(|&a, &b| lower[a as usize].cmp(&lower[b as usize]).then(a.cmp(&b)));
    sorted.iter().for_each(|i| out.extend_from_slice(&i.to_le_bytes()));
    out.resize(offsets_at, 0);
    let mut offset = 0u64;
    out.extend_from_slice(&offset.to_le_bytes());
    for w in &raw.words {
        offset += w.len() as u64;
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out.resize(text_at, 0);
    raw.words.iter().for_each(|w| out.extend_from_slice(w.as_bytes()));

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&out).and_then(|_| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

impl WordVectors {
    /// Opens a compact file: maps it and checks the header and section bounds.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is only read; it is replaced by rename, never rewritten in place.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |reason: &str| Error::BadVectors {
            path: path.to_path_buf(),
            reason: format!("{reason}; delete it to have it rebuilt"),
        };
        if mmap.len() < HEADER_LEN || &mmap[..8] != MAGIC {
            return Err(bad("not an imgsearch word-vector file"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(mmap[o..o + 4].try_into().unwrap()) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(mmap[o..o + 8].try_into().unwrap()) as usize;
        let dim = u32_at(8);
        let count = u64_at(16);
        let [unit_at, norms_at, sorted_at, offsets_at, text_at] = [24, 32, 40, 48, 56].map(u64_at);
        let fits = dim > 0
            && [unit_at, norms_at, sorted_at, offsets_at, text_at].iter().all(|a| a % 64 == 0)
            && unit_at + count * dim * 4 <= norms_at
            && norms_at + count * 4 <= sorted_at
            && sorted_at + count * 4 <= offsets_at
            && offsets_at + (count + 1) * 8 <= text_at
            && text_at <= mmap.len();
        if !fits {
            return Err(bad("corrupt header"));
        }
        let wv = Self {
            mmap,
            path: path.to_path_buf(),
            dim,
            count,
            unit_at,
            norms_at,
            sorted_at,
            offsets_at,
            text_at,
            quantized: std::sync::OnceLock::new(),
        };
        if wv.offsets()[count] as usize + text_at > wv.mmap.len() {
            return Err(bad("truncated word text"));
        }
        Ok(wv)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn f32s(&self, at: usize, n: usize) -> &[f32] {
        // SAFETY: `open` checked bounds; `at` is 64-byte aligned in a page-aligned map.
        unsafe { std::slice::from_raw_parts(self.mmap.as_ptr().add(at) as *const f32, n) }
    }

    /// All unit vectors, row-major `[len, dim]`.
    pub fn unit_vectors(&self) -> &[f32] {
        self.f32s(self.unit_at, self.count * self.dim)
    }

    pub(super) fn quantized(&self) -> &super::search::Quantized {
        self.quantized.get_or_init(|| super::search::Quantized::new(self.unit_vectors(), self.dim))
    }

    /// Word `id`'s unit vector.
    pub fn unit(&self, id: usize) -> &[f32] {
        &self.unit_vectors()[id * self.dim..(id + 1) * self.dim]
    }

    /// Word `id`'s original vector.
    pub fn raw(&self, id: usize) -> Vec<f32> {
        let norm = self.f32s(self.norms_at, self.count)[id];
        self.unit(id).iter().map(|v| v * norm).collect()
    }

    fn sorted(&self) -> &[u32] {
        // SAFETY: as in `f32s`.
        unsafe { std::slice::from_raw_parts(self.mmap.as_ptr().add(self.sorted_at) as *const u32, self.count) }
    }

    fn offsets(&self) -> &[u64] {
        // SAFETY: as in `f32s`.
        unsafe { std::slice::from_raw_parts(self.mmap.as_ptr().add(self.offsets_at) as *const u64, self.count + 1) }
    }

    /// Word `id`'s text.
    pub fn word(&self, id: usize) -> &str {
        let o = self.offsets();
        let bytes = &self.mmap[self.text_at + o[id] as usize..self.text_at + o[id + 1] as usize];
        std::str::from_utf8(bytes).unwrap_or("\u{fffd}")
    }

    /// The range of `sorted()` whose lowercased words start with `prefix` (lowercase).
    fn prefix_range(&self, prefix: &str) -> std::ops::Range<usize> {
        let sorted = self.sorted();
        let key = |i: usize| self.word(sorted[i] as usize).to_lowercase();
        let start = partition(sorted.len(), |i| key(i).as_str() < prefix);
        let end = start + partition(sorted.len() - start, |i| key(start + i).starts_with(prefix));
        start..end
    }

    /// Looks a word up, case-insensitively (an exact-case match wins a tie).
    pub fn id(&self, word: &str) -> Option<usize> {
        let lower = word.to_lowercase();
        let sorted = self.sorted();
        let range = self.prefix_range(&lower);
        let matches: Vec<usize> =
            sorted[range].iter().map(|&i| i as usize).take_while(|&i| self.word(i).to_lowercase() == lower).collect();
        matches.iter().copied().find(|&i| self.word(i) == word).or(matches.first().copied())
    }

    /// Close vocabulary entries for an unknown word: same prefix first, then
    /// small edit distance; frequent (low-id) words first.
    pub fn suggest(&self, word: &str, n: usize) -> Vec<String> {
        let lower = word.to_lowercase();
        let chars: Vec<char> = lower.chars().collect();
        let mut scored: Vec<(usize, usize)> = Vec::new(); // (distance, id)
        let max_dist = if chars.len() <= 4 { 1 } else { 2 };
        for id in 0..self.count {
            let w = self.word(id);
            let len = w.chars().count();
            if len.abs_diff(chars.len()) > max_dist {
                continue;
            }
            let d = levenshtein(&chars, &w.to_lowercase().chars().collect::<Vec<_>>(), max_dist);
            if d <= max_dist {
                scored.push((d, id));
            }
        }
        scored.sort();
        let mut out: Vec<String> = Vec::new();
        // Longer words that start with the query (typed too little).
        let sorted = self.sorted();
        let mut prefixed: Vec<usize> = sorted[self.prefix_range(&lower)].iter().map(|&i| i as usize).collect();
        prefixed.sort();
        for id in scored.into_iter().map(|(_, id)| id).chain(prefixed) {
            let w = self.word(id).to_owned();
            if !out.contains(&w) && out.len() < n {
                out.push(w);
            }
        }
        out
    }
}

/// The first index in `0..n` where `pred` turns false (pred is true, then false).
fn partition(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (tempfile::TempDir, WordVectors) {
        let raw = RawVectors {
            words: vec!["the".into(), "Cat".into(), "cat".into(), "dog".into(), "catalog".into()],
            dim: 2,
            data: vec![1.0, 0.0, 0.0, 2.0, 0.0, 3.0, 3.0, 4.0, 1.0, 1.0],
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.wv");
        write_compact(&raw, &p).unwrap();
        let wv = WordVectors::open(&p).unwrap();
        (dir, wv)
    }

    #[test]
    fn compact_form_round_trips() {
        let (_d, wv) = tiny();
        assert_eq!((wv.len(), wv.dim()), (5, 2));
        assert_eq!(wv.word(4), "catalog");
        assert_eq!(wv.unit(3), &[0.6, 0.8]);
        assert_eq!(wv.raw(3), vec![3.0, 4.0]);
    }

    #[test]
    fn lookup_is_case_insensitive_and_exact_case_wins() {
        let (_d, wv) = tiny();
        assert_eq!(wv.id("DOG"), Some(3));
        assert_eq!(wv.id("cat"), Some(2));
        assert_eq!(wv.id("Cat"), Some(1));
        assert_eq!(wv.id("ca"), None);
    }

    #[test]
    fn suggestions_use_edit_distance_and_prefix() {
        let (_d, wv) = tiny();
        let s = wv.suggest("dgo", 3);
        assert_eq!(s.first().map(String::as_str), Some("dog"));
        assert!(wv.suggest("catal", 5).contains(&"catalog".to_string()));
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one() {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(levenshtein(&c("dgo"), &c("dog"), 2), 1);
        assert_eq!(levenshtein(&c("kitten"), &c("sitting"), 5), 3);
        assert_eq!(levenshtein(&c("abc"), &c("xyz"), 1), 2);
    }

    #[test]
    fn corrupt_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.wv");
        std::fs::write(&p, b"IMGSWRD1 and then garbage that is long enough for a header..............").unwrap();
        let err = WordVectors::open(&p).err().unwrap().to_string();
        assert!(err.contains("bad.wv"), "{err}");
    }
}
