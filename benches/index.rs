//! Vector search at scale, on synthetic clustered unit vectors (1280-d):
//! HNSW build time (all cores), query p50/p99 on one thread for the exact
//! scan and for HNSW, recall@10 of HNSW against exact full-precision search,
//! and memory. Then the end-to-end indexing rate of the 1000 real images.
//!
//! `cargo bench --bench index` (N = 100k). The 1M run is the same bench:
//! `IMGSEARCH_BENCH_N=1000000 cargo bench --bench index` (builds for a while;
//! needs ~12 GB). `IMGSEARCH_BENCH_EF` lists HNSW's ef values to sweep at
//! query time (default `64,128,256`); `IMGSEARCH_BENCH_M` and `IMGSEARCH_BENCH_EFC`
//! set the graph's M and ef_construction; `IMGSEARCH_BENCH_DUMP=<dir>` writes the
//! vectors, queries and exact answers there for `scripts/ann-peers` (hnswlib and
//! faiss on the same vectors); `IMGSEARCH_BENCH_HNSW_DIR` saves the
//! built graph there, and a later run with the same N loads it instead.

use std::time::Instant;

use imgsearch::index::{ExactIndex, HnswIndex, HnswParams};

mod common;
use common::{clustered, pct, rss_mb, time_queries, Rng};

fn main() {
    let n: usize = std::env::var("IMGSEARCH_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let efs: Vec<usize> = std::env::var("IMGSEARCH_BENCH_EF")
        .unwrap_or_else(|_| "64,128,256".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let env_usize =
        |name: &str, default: usize| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let params = HnswParams {
        m: env_usize("IMGSEARCH_BENCH_M", HnswParams::default().m),
        ef_construction: env_usize("IMGSEARCH_BENCH_EFC", HnswParams::default().ef_construction),
        ..HnswParams::default()
    };
    let saved = std::env::var_os("IMGSEARCH_BENCH_HNSW_DIR").map(|d| std::path::PathBuf::from(d).join(format!("n{n}")));
    let dim = 1280;
    let n_queries = 200;
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let rss0 = rss_mb();
    let vectors = clustered(n, dim, (n / 100).max(10), &mut rng);
    // Queries: fresh points from the same distribution (not in the index).
    let queries = common::queries(n_queries, n, dim, &mut rng);
    let rss_vectors = rss_mb() - rss0;
    println!("N = {n}, dim {dim}, vectors {:.0} MB", rss_vectors);

    let exact = ExactIndex::new(&vectors, dim);
    let (truth, exact_ms) = time_queries(&exact, &queries[..dim * 50.min(n_queries)], dim);
    let (truth_all, _) = if n <= 200_000 { time_queries(&exact, &queries, dim) } else { (truth.clone(), vec![]) };
    println!("exact scan, 1 thread: p50 {:.2} ms, p99 {:.2} ms", pct(&exact_ms, 0.5), pct(&exact_ms, 0.99));
    if let Some(dir) = std::env::var_os("IMGSEARCH_BENCH_DUMP") {
        // The same vectors, queries and exact answers for the Python peers
        // (`scripts/ann-peers`): raw little-endian f32 and u32.
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let truth_used = if truth_all.len() == n_queries { &truth_all } else { &truth };
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(dir.join("vectors.f32"), bytes(&vectors)).unwrap();
        std::fs::write(dir.join("queries.f32"), bytes(&queries[..truth_used.len() * dim])).unwrap();
        let ids: Vec<u8> = truth_used.iter().flatten().flat_map(|&i| (i as u32).to_le_bytes()).collect();
        std::fs::write(dir.join("truth.u32"), ids).unwrap();
        let meta = format!("{{\"n\": {n}, \"dim\": {dim}, \"queries\": {}, \"k\": 10}}", truth_used.len());
        std::fs::write(dir.join("meta.json"), meta).unwrap();
        println!("bench vectors written to {}", dir.display());
    }

    let rss_before = rss_mb();
    let t = Instant::now();
    let mut hnsw = match &saved {
        Some(dir) if HnswIndex::exists(dir) => {
            let h = HnswIndex::load(dir, params).unwrap();
            println!("HNSW loaded from {} in {:.1} s", dir.display(), t.elapsed().as_secs_f64());
            h
        }
        _ => {
            let h = HnswIndex::build(&vectors, dim, params);
            println!(
                "HNSW (int8 graph, M={}, ef_construction={}) build: {:.1} s on {} threads, +{:.0} MB",
                params.m,
                params.ef_construction,
                t.elapsed().as_secs_f64(),
                rayon::current_num_threads(),
                rss_mb() - rss_before
            );
            if let Some(dir) = &saved {
                std::fs::create_dir_all(dir).unwrap();
                h.save(dir).unwrap();
            }
            h
        }
    };
    for &ef in &efs {
        hnsw.set_ef_search(ef);
        let n_q = if truth_all.len() == n_queries { n_queries } else { truth.len() };
        let (found, hnsw_ms) = time_queries(&hnsw.over(&vectors, dim), &queries[..n_q * dim], dim);
        let truth_used = if truth_all.len() == found.len() { &truth_all } else { &truth };
        let recall = common::recall(truth_used, &found);
        println!(
            "HNSW ef={ef}, 1 thread: p50 {:.3} ms, p99 {:.3} ms, recall@10 vs exact {:.3} ({} queries)",
            pct(&hnsw_ms, 0.5),
            pct(&hnsw_ms, 0.99),
            recall,
            truth_used.len()
        );
    }
    {
        // The ceiling the int8 codes set: every row's code scored, the best
        // 64 re-ranked in f32 (what a walk that missed nothing would give).
        hnsw.set_ef_search(64);
        let all: Vec<usize> = (0..n).collect();
        let reranked = hnsw.over(&vectors, dim);
        let n_q = truth.len();
        let found: Vec<Vec<usize>> = queries[..n_q * dim]
            .chunks_exact(dim)
            .map(|q| reranked.search_among(q, &all, 10).iter().map(|h| h.id).collect())
            .collect();
        println!(
            "int8 scan of every row, best 64 re-ranked: recall@10 vs exact {:.3} ({n_q} queries)",
            common::recall(&truth, &found)
        );
    }
    println!("memory: RSS {:.0} MB in all", rss_mb());

    if std::env::var_os("IMGSEARCH_BENCH_SKIP_REAL").is_none() {
        // End-to-end indexing of the 1000 real images into a fresh store.
        let images =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/pascal-sentences/images");
        let db = tempfile::tempdir().unwrap();
        let bin = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/imgsearch");
        let bin = std::env::var_os("CARGO_TARGET_DIR")
            .map(|d| std::path::PathBuf::from(d).join("release/imgsearch"))
            .filter(|p| p.exists())
            .unwrap_or(bin);
        let t = Instant::now();
        let out = std::process::Command::new(&bin).arg("--db").arg(db.path()).arg("index").arg(&images).output();
        match out {
            Ok(o) if o.status.success() => println!(
                "index 1000 real images end to end (decode, embed, store): {:.1} s, {:.0} img/s",
                t.elapsed().as_secs_f64(),
                1000.0 / t.elapsed().as_secs_f64()
            ),
            _ => println!("index of real images skipped: build the binary first (cargo build --release)"),
        }
    }
}
