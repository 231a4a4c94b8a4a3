//! Word vectors: time to open a 400k-word vocabulary and answer a first query
//! (50-d default and a synthetic 300-d file of the same shape), and query
//! latency p50/p99 on one thread.
//!
//! `cargo bench --bench words` (needs `imgsearch models fetch`).

use std::time::Instant;

use imgsearch::words::{self, write_compact, RawVectors, WordVectors};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn measure(name: &str, path: &std::path::Path, queries: usize) {
    // Open + first answer, median of 5 (the file is in the page cache after the first).
    let mut opens = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let wv = WordVectors::open(path).unwrap();
        let q = wv.raw(wv.len() / 3);
        let _ = wv.nearest(&q, 10);
        opens.push(t.elapsed().as_secs_f64() * 1e3);
    }
    opens.sort_by(f64::total_cmp);
    let wv = WordVectors::open(path).unwrap();
    let mut lat = Vec::new();
    for i in 0..queries {
        let id = (i * 7919) % 20_000; // frequent words, as people type
        let q = wv.raw(id);
        let t = Instant::now();
        let n = wv.nearest(&q, 10);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(n[0].id, id);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "{name}: {} words x {}d | open + first query: median {:.1} ms | query k=10: p50 {:.2} ms, p99 {:.2} ms ({queries} queries, 1 thread)",
        wv.len(),
        wv.dim(),
        opens[2],
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}

fn main() {
    let queries: usize = std::env::var("IMGSEARCH_BENCH_QUERIES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    rayon::ThreadPoolBuilder::new().num_threads(1).build_global().ok();
    let models = imgsearch::models::models_dir(None);
    let default = words::default_path(&models);
    assert!(default.exists(), "{} missing: run `imgsearch models fetch`", default.display());
    measure("glove 6B 50d", &default, queries);

    // A synthetic 300-d vocabulary of the same size, written once to a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synthetic300.wv");
    let (count, dim) = (400_000usize, 300usize);
    let mut state = 0x2545F4914F6CDD1Du64;
    let data: Vec<f32> = (0..count * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let raw = RawVectors { words: (0..count).map(|i| format!("w{i}")).collect(), dim, data };
    write_compact(&raw, &path).unwrap();
    drop(raw);
    measure("synthetic 300d", &path, queries / 2);
}
