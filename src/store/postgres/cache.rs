//! Vectors a long-lived process (`serve`) keeps in its own memory, so that
//! a narrow filter's images are scored here rather than one by one in SQL.
//!
//! pgvector filters after its walk, so a filter that lets a tenth of the
//! images through either walks ten times as far or scores every passing row
//! on the server: about 1 us a row for the half-precision distance and the
//! row's visit, more for a text side, whose rows are looked up by hash. A
//! search that filters this narrowly asks the database only which contents
//! pass (a 64-bit id of each, `images.content`, `hashtextextended` of its
//! hash: 3000 images' from the index in 0.56 ms, where their keys and
//! 64-digit hashes took 1.9), scores them here on an
//! int8 copy of their vectors, and has the database score the best few
//! again in full precision, so the distances returned are the same as
//! without the copy.
//!
//! A content's vector never changes under its hash (a `vectors` row is
//! inserted once per content, a text side's row once per projection
//! fingerprint, a joint row once per model), so the copy cannot go stale
//! between processes that share the database: which images exist and pass
//! still comes from the database on every search. Vectors the copy lacks
//! are fetched when a search first needs them; one-shot commands (the CLI)
//! never keep a copy.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// The most the copies may hold, in bytes; past it they are dropped and
/// filled again as searches need them (a 1280-d vector is 1.3 KB: 400k
/// images, or 200k with two text sides).
const CAPACITY: usize = 512 << 20;

/// How long a content with no row in a space (a text side not synced for
/// it yet) is taken as absent before the database is asked again.
const ABSENT_FOR: Duration = Duration::from_secs(60);

/// The copies, one per space (`cnn`, a text side's fingerprint, a model).
#[derive(Default)]
pub(super) struct Cache {
    spaces: RwLock<HashMap<String, Space>>,
}

#[derive(Default)]
struct Space {
    dim: usize,
    /// Each content's row in `data`, by its id.
    rows: Map<u32>,
    /// Each row's content.
    hashes: Vec<Box<str>>,
    /// Unit vectors, `dim` int8 values a row, times the row's `scales`.
    data: Vec<i8>,
    scales: Vec<f32>,
    /// Contents with no row in this space, and since when.
    absent: Map<Instant>,
}

/// Maps keyed by a content's id, the database's 64-bit hash of its hash:
/// a lookup is one probe of a flat table, where a map keyed by the
/// 64-character strings took 130-180 ns a lookup (a pointer to follow and
/// 64 bytes to compare), longer than scoring the vector. Of two contents
/// of one id (about n^2 / 2^65: 3e-8 at a million) the copy would know
/// only the first, and a search whose filter passes only the other could
/// miss it; the distances returned are the database's all the same.
type Map<V> = HashMap<u64, V, std::hash::BuildHasherDefault<Low64>>;

/// Hashes an id as it is (uniform already).
#[derive(Default)]
struct Low64(u64);

impl std::hash::Hasher for Low64 {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..c.len()].copy_from_slice(c);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Cache {
    /// The hashes of the `m` contents among `ids` nearest to `query` (a
    /// unit vector) in space `space`, nearest first; contents known to
    /// have no vector in the space are passed over. `Err` with the ids the
    /// copy lacks (each once) when there are any: fetch them
    /// ([`Cache::insert`]) and ask again.
    pub(super) fn nearest(
        &self,
        space: &str,
        query: &[f32],
        ids: &[i64],
        m: usize,
    ) -> std::result::Result<Vec<String>, Vec<i64>> {
        let spaces = self.spaces.read().unwrap_or_else(|e| e.into_inner());
        let missing = |lacks: &dyn Fn(u64) -> bool| {
            let mut seen = std::collections::HashSet::new();
            ids.iter().copied().filter(|&id| lacks(id as u64) && seen.insert(id)).collect()
        };
        let Some(s) = spaces.get(space).filter(|s| s.dim == query.len()) else {
            return Err(missing(&|_| true));
        };
        let absent = |id: &u64| s.absent.get(id).is_some_and(|at| at.elapsed() < ABSENT_FOR);
        // Each passing content's row (those absent from the space passed over).
        let mut rows = Vec::with_capacity(ids.len());
        let mut lacking = false;
        for &id in ids {
            let id = id as u64;
            match s.rows.get(&id) {
                Some(&r) => rows.push(r),
                None if absent(&id) => {}
                None => lacking = true,
            }
        }
        if lacking {
            return Err(missing(&|id| !s.rows.contains_key(&id) && !absent(&id)));
        }
        rows.sort_unstable();
        rows.dedup();
        let dim = s.dim;
        // A plain loop, not an iterator's closure, so that the dot product
        // is compiled inside `simd`'s wide copy.
        let mut best: Vec<(f32, u32)> = Vec::with_capacity(rows.len());
        crate::simd::simd(
            #[inline(always)]
            || {
                for (n, &r) in rows.iter().enumerate() {
                    if let Some(&ahead) = rows.get(n + PREFETCH_ROWS) {
                        prefetch(&s.data[ahead as usize * dim..(ahead as usize + 1) * dim]);
                    }
                    let row = &s.data[r as usize * dim..(r as usize + 1) * dim];
                    best.push((dot_i8(row, query) * s.scales[r as usize], r));
                }
            },
        );
        let m = m.min(best.len());
        if m == 0 {
            return Ok(Vec::new());
        }
        best.select_nth_unstable_by(m - 1, |a, b| b.0.total_cmp(&a.0));
        best.truncate(m);
        best.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        Ok(best.into_iter().map(|(_, r)| s.hashes[r as usize].to_string()).collect())
    }

    /// Keeps `vectors` (id, hash, vector of `dim`) in space `space`, at
    /// unit length; a content without a vector (`None`) is absent.
    pub(super) fn insert(&self, space: &str, dim: usize, vectors: Vec<(i64, String, Option<Vec<f32>>)>) {
        let mut spaces = self.spaces.write().unwrap_or_else(|e| e.into_inner());
        let held: usize = spaces.values().map(|s| s.data.len()).sum();
        if held + vectors.len() * dim > CAPACITY {
            spaces.clear();
        }
        let s = spaces.entry(space.to_owned()).or_default();
        if s.dim != dim {
            *s = Space { dim, ..Default::default() };
        }
        let now = Instant::now();
        for (id, hash, v) in vectors {
            let id = id as u64;
            let Some(mut v) = v else {
                s.absent.insert(id, now);
                continue;
            };
            if v.len() != dim || s.rows.contains_key(&id) {
                continue;
            }
            s.absent.remove(&id);
            crate::vector::normalize(&mut v);
            s.rows.insert(id, s.hashes.len() as u32);
            s.hashes.push(hash.into_boxed_str());
            let top = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = if top > 0.0 { top / 127.0 } else { 1.0 };
            s.data.extend(v.iter().map(|&x| (x / scale).round() as i8));
            s.scales.push(scale);
        }
    }

    /// Bytes held, over every space.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.spaces.read().unwrap().values().map(|s| s.data.len()).sum()
    }
}

/// How many rows ahead the scoring loop asks for the row it will read:
/// after other searches the rows come from memory, not cache. 3000
/// 1280-d rows, cache flushed: 1074 -> 846 us in a block, 2141 -> 1527 us
/// spread over the copy (2 and 8 rows ahead about the same, 16 slower).
const PREFETCH_ROWS: usize = 4;

/// Asks the CPU to bring `row` into cache (a hint; no effect elsewhere).
#[inline(always)]
fn prefetch(row: &[i8]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(64) {
        // SAFETY: a prefetch reads nothing and cannot fault; SSE is baseline on x86_64.
        unsafe { std::arch::x86_64::_mm_prefetch(line.as_ptr(), std::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

#[inline(always)]
fn dot_i8(a: &[i8], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(&x, y)| x as f32 * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] as f32 * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(n: usize, dim: usize) -> Vec<Vec<f32>> {
        let mut state = 0x9E3779B97F4A7C15_u64;
        (0..n)
            .map(|_| {
                (0..dim)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_int8_copy_ranks_as_full_precision_does() {
        let (n, dim) = (500, 1280);
        let vs = vectors(n, dim);
        let hashes: Vec<String> = (0..n).map(|i| format!("{i:064x}")).collect();
        // Ids far apart, as the database's hashes are.
        let ids: Vec<i64> = (0..n as i64).map(|i| i.wrapping_mul(0x1E37_79B9_7F4A_7C15)).collect();
        let cache = Cache::default();
        // Scaled copies: the copy keeps unit vectors.
        cache.insert(
            "cnn",
            dim,
            (0..n).map(|i| (ids[i], hashes[i].clone(), Some(vs[i].iter().map(|x| x * 3.0).collect()))).collect(),
        );
        assert_eq!(cache.held(), n * dim);
        assert_eq!(cache.nearest("cnn", &crate::vector::unit(&vs[0]), &ids, 1).unwrap()[0], hashes[0]);
        // Every other content passes; the copy's best 10 hold the true best 5.
        let passing: Vec<i64> = ids.iter().copied().step_by(2).collect();
        for q in vs.iter().take(20) {
            let unit = crate::vector::unit(q);
            let best = cache.nearest("cnn", &unit, &passing, 10).unwrap();
            assert_eq!(best.iter().collect::<std::collections::HashSet<_>>().len(), 10);
            let mut truth: Vec<(f32, usize)> =
                (0..n).step_by(2).map(|i| (crate::index::dot(&crate::vector::unit(&vs[i]), &unit), i)).collect();
            truth.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (_, i) in &truth[..5] {
                assert!(best.contains(&hashes[*i]), "true neighbour {i} kept");
            }
            assert_eq!(best[0], hashes[truth[0].1]);
        }
    }

    #[test]
    fn missing_contents_are_named_once_and_absent_ones_passed_over() {
        let cache = Cache::default();
        let v = vectors(2, 8);
        let (a, b) = (crate::vector::unit(&v[0]), crate::vector::unit(&v[1]));
        let (ia, ib, ic, id) = (-5_i64, 7, 1 << 40, 3);
        cache.insert(
            "text ab",
            8,
            vec![(ia, "a".into(), Some(v[0].clone())), (ib, "b".into(), Some(v[1].clone())), (ic, "c".into(), None)],
        );
        // "c" came back without a vector: passed over for a while; "d" is new, named once.
        assert_eq!(cache.nearest("text ab", &a, &[ia, id, ic, id, ib], 2), Err(vec![id]));
        assert_eq!(cache.nearest("text ab", &b, &[ia, ic, ib], 5), Ok(vec!["b".to_owned(), "a".to_owned()]));
        // Another space knows none of them; a query of another width is another space.
        assert_eq!(cache.nearest("cnn", &a, &[ib, ia, ib], 2), Err(vec![ib, ia]));
        assert_eq!(cache.nearest("text ab", &[0.5; 4], &[ia], 2), Err(vec![ia]));
        // A vector of the wrong width is not kept.
        cache.insert("text ab", 8, vec![(9, "e".into(), Some(vec![1.0; 4]))]);
        assert_eq!(cache.held(), 16);
    }
}
