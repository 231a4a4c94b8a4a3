//! Approximate search: HNSW (Malkov & Yashunin, "Efficient and robust
//! approximate nearest neighbor search using Hierarchical Navigable Small
//! World graphs", 2016) from the `hnsw_rs` crate, persisted next to the store
//! and reloaded without a rebuild.
//!
//! The graph holds int8 copies of the unit vectors (one scale for the whole
//! index, chosen from the data) and walks them with an int8 dot product; the
//! candidates it ends with are re-ranked by the full-precision vectors of the
//! store ([`HnswIndex::over`]). A walk is bound by reading vectors from
//! memory, so a quarter of the bytes made it several times faster at the same
//! recall (`cargo bench --bench index`, figures in the README), and the
//! graph's copy of the data is a quarter of the size. Recall is always
//! measured against exact f32 search.

use std::path::Path;

use hnsw_rs::prelude::*;

use super::{angular, dot, Hit, VectorIndex};
use crate::simd::simd;
use crate::{Error, Result};

/// File base name: the manifest `hnsw-i8.json` and the generation folder
/// `hnsw-i8.<n>/` with `hnsw-i8.hnsw.graph` and `hnsw-i8.hnsw.data`. Loose
/// files earlier versions wrote beside the store are removed at the next save.
const BASENAME: &str = "hnsw-i8";

/// Distance of int8 vectors: `1 - dot / (dim * 127^2)`, in [0, 2]. The
/// graph only compares distances, and this is monotone in the dot product
/// of the quantised unit vectors (a scale-free form because `hnsw_rs` makes
/// the distance with `Default` when it loads a graph).
#[derive(Debug, Default, Clone, Copy)]
pub struct QuantDot;

impl Distance<i8> for QuantDot {
    fn eval(&self, a: &[i8], b: &[i8]) -> f32 {
        let limit = a.len() as i64 * 127 * 127;
        ((limit - dot_i8(a, b) as i64) as f64 / limit as f64) as f32
    }
}

/// The int8 dot product, with the AVX-512 byte/word instructions where the CPU has them.
#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[inline(always)]
    fn body(a: &[i8], b: &[i8]) -> i32 {
        let mut acc = [0i32; 32];
        let (ac, bc) = (a.chunks_exact(32), b.chunks_exact(32));
        let tail: i32 = ac.remainder().iter().zip(bc.remainder()).map(|(&x, &y)| x as i32 * y as i32).sum();
        for (x, y) in ac.zip(bc) {
            for i in 0..32 {
                acc[i] += x[i] as i32 * y[i] as i32;
            }
        }
        acc.iter().sum::<i32>() + tail
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn wide(a: &[i8], b: &[i8]) -> i32 {
            body(a, b)
        }
        if is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has the features `wide` is compiled for.
            return unsafe { wide(a, b) };
        }
    }
    simd(|| body(a, b))
}

/// Graph parameters.
#[derive(Debug, Clone, Copy)]
pub struct HnswParams {
    /// Links per node (M).
    pub m: usize,
    pub ef_construction: usize,
    /// Candidate list size at query time (raised to k when smaller).
    pub ef_search: usize,
    /// Fill each node's links up to M with neighbours the diversity
    /// heuristic pruned (`hnsw_rs`'s keep_pruned), at build time.
    pub keep_pruned: bool,
}

impl Default for HnswParams {
    fn default() -> Self {
        // M 24 / ef_construction 150: at 1M clustered vectors M 16 / 100
        // stopped at recall 0.944 whatever the ef (the walk missed whole
        // clusters); these reach 1.000 at ef 128 (`cargo bench --bench index`).
        Self { m: 24, ef_construction: 150, ef_search: 64, keep_pruned: false }
    }
}

/// The query-time candidate list for a graph of `n` vectors. Measured on
/// clustered 1280-d vectors (`cargo bench --bench index`, int8 graph, M 24,
/// ef_construction 150): recall@10 0.98 at ef 64 on 300k; on 1M 0.90 at
/// ef 64, 0.96 at ef 96, 1.000 at ef 128 (p50 1.33 ms on one core).
pub fn ef_search_for(n: usize) -> usize {
    match n {
        0..=400_000 => 64,
        400_001..=700_000 => 96,
        _ => 128,
    }
}

/// An HNSW graph over the rows of a vector set; ids are row numbers.
pub struct HnswIndex {
    hnsw: Hnsw<'static, i8, QuantDot>,
    /// Quantised value = round(unit value * scale), clamped to ±127.
    scale: f32,
    len: usize,
    ef_search: usize,
}

impl HnswIndex {
    /// Builds the graph over `vectors` (`[n, dim]`, unit rows), inserting in parallel.
    pub fn build(vectors: &[f32], dim: usize, params: HnswParams) -> Self {
        let n = vectors.len() / dim;
        let max = vectors.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { 127.0 / max } else { 1.0 };
        let mut hnsw = Hnsw::new(params.m, n.max(1), 16, params.ef_construction, QuantDot);
        hnsw.set_keeping_pruned(params.keep_pruned);
        let mut index = Self { hnsw, scale, len: 0, ef_search: params.ef_search.max(ef_search_for(n)) };
        index.insert_rows(vectors, dim, 0);
        index
    }

    fn quantize(&self, row: &[f32]) -> Vec<i8> {
        row.iter().map(|v| (v * self.scale).round().clamp(-127.0, 127.0) as i8).collect()
    }

    /// Inserts rows `from..` of `vectors` (rows before `from` are already in).
    /// Values beyond the scale chosen at build time are clamped; the re-rank
    /// corrects the order.
    pub fn insert_rows(&mut self, vectors: &[f32], dim: usize, from: usize) {
        use rayon::prelude::*;
        let quantized: Vec<(Vec<i8>, usize)> =
            vectors.par_chunks_exact(dim).enumerate().skip(from).map(|(i, r)| (self.quantize(r), i)).collect();
        let rows: Vec<(&[i8], usize)> = quantized.iter().map(|(q, i)| (q.as_slice(), *i)).collect();
        self.hnsw.set_searching_mode(false);
        self.hnsw.parallel_insert_slice(&rows);
        self.hnsw.set_searching_mode(true);
        self.len = vectors.len() / dim;
    }

    pub fn set_ef_search(&mut self, ef: usize) {
        self.ef_search = ef;
    }

    /// Number of vectors in the graph.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The graph searched with its candidates re-ranked by `vectors`, the
    /// full-precision unit rows it was built from (`[n, dim]`).
    pub fn over<'a>(&'a self, vectors: &'a [f32], dim: usize) -> Reranked<'a> {
        assert_eq!(vectors.len(), self.len * dim, "the graph covers {} rows", self.len);
        Reranked { index: self, vectors, dim }
    }

    /// Writes the graph into `dir` under one name, atomically: the graph
    /// and its data go into a new generation folder (`hnsw-i8.<n>/`), synced,
    /// then the manifest `hnsw-i8.json` (rows, scale, sha256 of both files)
    /// is replaced by a rename, then older generations are deleted. A crash
    /// leaves the old graph or the new one, never a mix.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let cannot =
            |e: String| Error::Store { path: dir.join(BASENAME), reason: format!("cannot save the HNSW index: {e}") };
        let previous = read_manifest(dir).map(|m| m.generation).unwrap_or(0);
        let generation = previous + 1;
        let folder = dir.join(format!("{BASENAME}.{generation}"));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
        self.hnsw.file_dump(&folder, BASENAME).map_err(|e| cannot(e.to_string()))?;
        let mut sums = Vec::new();
        for ext in ["hnsw.graph", "hnsw.data"] {
            let file = folder.join(format!("{BASENAME}.{ext}"));
            std::fs::File::open(&file).and_then(|f| f.sync_all()).map_err(|e| Error::io(&file, e))?;
            sums.push(crate::files::sha256_file(&file)?);
        }
        let manifest = Manifest {
            generation,
            rows: self.len,
            scale: self.scale,
            graph_sha256: sums[0].clone(),
            data_sha256: sums[1].clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| cannot(e.to_string()))?;
        crate::files::write_atomic(&dir.join(format!("{BASENAME}.json")), &json)?;
        // Older generations, and the loose files earlier versions wrote.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let old_generation = name
                    .strip_prefix(&format!("{BASENAME}."))
                    .and_then(|g| g.parse::<u64>().ok())
                    .is_some_and(|g| g != generation);
                let loose = name.ends_with(".hnsw.graph")
                    || name.ends_with(".hnsw.data")
                    || name == format!("{BASENAME}.scale");
                if old_generation {
                    let _ = std::fs::remove_dir_all(entry.path());
                } else if loose {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Whether `dir` holds a saved graph (its manifest).
    pub fn exists(dir: &Path) -> bool {
        read_manifest(dir).is_some()
    }

    /// Loads the graph [`save`](Self::save) wrote, after checking both
    /// files against the manifest's checksums (a truncated or bit-flipped
    /// graph once panicked or aborted inside `hnsw_rs`). Any damage is an
    /// error saying the graph is rebuilt by `imgsearch index`: it is
    /// derived data.
    pub fn load(dir: &Path, params: HnswParams) -> Result<Self> {
        let damaged = |e: String| Error::Store {
            path: dir.join(BASENAME),
            reason: format!("the HNSW index is damaged ({e}); `imgsearch index` rebuilds it"),
        };
        let manifest = read_manifest(dir).ok_or_else(|| damaged("no readable manifest".into()))?;
        let folder = dir.join(format!("{BASENAME}.{}", manifest.generation));
        for (ext, want) in [("hnsw.graph", &manifest.graph_sha256), ("hnsw.data", &manifest.data_sha256)] {
            let file = folder.join(format!("{BASENAME}.{ext}"));
            if &crate::files::sha256_file(&file).map_err(|e| damaged(e.to_string()))? != want {
                return Err(damaged(format!("{} does not match its checksum", file.display())));
            }
        }
        // The loaded graph borrows its loader; the loader is a few bytes and
        // lives as long as the process needs the index, so it is leaked.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(&folder, BASENAME)));
        fn read_graph(io: &'static mut HnswIo) -> anyhow::Result<Hnsw<'static, i8, QuantDot>> {
            io.load_hnsw::<i8, QuantDot>()
        }
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let io = io;
            read_graph(io)
        }));
        let hnsw: Hnsw<'static, i8, QuantDot> = match loaded {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(damaged(e.to_string())),
            Err(_) => return Err(damaged("the graph could not be read".into())),
        };
        let len = hnsw.get_nb_point();
        if len != manifest.rows {
            return Err(damaged(format!("{len} points, the manifest says {}", manifest.rows)));
        }
        Ok(Self { hnsw, scale: manifest.scale, len, ef_search: params.ef_search.max(ef_search_for(len)) })
    }
}

/// `hnsw-i8.json`: which generation is current and how to check it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    generation: u64,
    rows: usize,
    scale: f32,
    graph_sha256: String,
    data_sha256: String,
}

fn read_manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(dir.join(format!("{BASENAME}.json"))).ok()?).ok()
}

/// [`HnswIndex`] with the full-precision rows to re-rank its candidates.
pub struct Reranked<'a> {
    index: &'a HnswIndex,
    vectors: &'a [f32],
    dim: usize,
}

impl VectorIndex for Reranked<'_> {
    fn len(&self) -> usize {
        self.index.len
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let q = crate::vector::unit(query);
        if crate::vector::norm(&q) == 0.0 || k == 0 || self.index.len == 0 {
            return Vec::new();
        }
        let ef = self.index.ef_search.max(k);
        // Every candidate the walk ends with is re-scored in f32.
        let candidates = self.index.hnsw.search(&self.index.quantize(&q), ef, ef);
        let mut hits: Vec<Hit> = simd(
            #[inline(always)]
            || {
                candidates
                    .iter()
                    .map(|n| {
                        let row = &self.vectors[n.d_id * self.dim..][..self.dim];
                        Hit { id: n.d_id, distance: angular(dot(&q, row)) }
                    })
                    .collect()
            },
        );
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        hits.truncate(k);
        hits
    }
}
