//! Near-duplicate grouping at scale, the way `imgsearch duplicates` runs it:
//! synthetic 1280-d vectors in a real folder store (SQLite records, the
//! HNSW graph `index` builds above 20k images), of which some originals
//! have near-copies (the original plus a little noise, as a re-encode or a
//! resize moves a CNN embedding). Reports the time to group every image
//! (the graph already built, as after `index`) and the precision and recall
//! of the pairs put together against the copies made.
//!
//! `cargo bench --bench duplicates` (N = 100k; `IMGSEARCH_BENCH_N` for another size).

use std::collections::HashMap;
use std::time::Instant;

use imgsearch::backbone::Backbone;
use imgsearch::duplicates::{default_max_distance, groups, pair_scores};
use imgsearch::metadata::PhotoMeta;
use imgsearch::store::{ImageStore, NewImage, NewVector, Store};

mod common;
use common::Rng;

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn main() {
    let n: usize = std::env::var("IMGSEARCH_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let dim = 1280;
    let mut rng = Rng(0x2545F4914F6CDD1D);
    // One original in eight gets two copies: N = originals * 10/8.
    let originals = n * 8 / 10;
    let clusters = (originals / 100).max(10);
    let centres: Vec<f32> = (0..clusters * dim).map(|_| rng.next()).collect();
    // Photos of one cluster (one scene) lie ~1.0 apart; a copy 0.07-0.35 from its original.
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(n);
    let mut family: HashMap<usize, usize> = HashMap::new();
    for i in 0..originals {
        let c = &centres[(i % clusters) * dim..][..dim];
        vectors.push(unit(c.iter().map(|&m| m + rng.next()).collect()));
    }
    for i in (0..originals).step_by(8) {
        for _ in 0..2 {
            if vectors.len() == n {
                break;
            }
            let amount = 0.1 + 0.4 * (rng.next() + 0.5);
            let copy = unit(vectors[i].iter().map(|&x| x + amount * 0.0280 * 2.0 * rng.next()).collect());
            family.insert(vectors.len(), i);
            vectors.push(copy);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), "lite0", dim).unwrap();
    let start = Instant::now();
    for (b, chunk) in vectors.chunks(1000).enumerate() {
        let batch: Vec<NewImage> = chunk
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let i = b * 1000 + j;
                NewImage {
                    path: format!("/photos/{i}.jpg"),
                    hash: format!("{i:08x}"),
                    size: 1000,
                    mtime: 0,
                    label: String::new(),
                    vector: NewVector::Embedding(v.clone()),
                    meta: PhotoMeta::default(),
                }
            })
            .collect();
        store.add_batch(&batch).unwrap();
    }
    let stored = start.elapsed().as_secs_f64();
    let t = Instant::now();
    let graph = store.upkeep().unwrap();
    println!(
        "{n} images ({} copies of {} originals) stored in {stored:.1} s; HNSW graph over {graph:?} rows built in {:.1} s",
        family.len(),
        family.len() / 2,
        t.elapsed().as_secs_f64()
    );
    // Keys are given in insertion order from 1.
    let keys: Vec<i64> = {
        let mut all = store.all().unwrap();
        all.sort_by_key(|r| r.key);
        all.iter().map(|r| r.key).collect()
    };
    let family_keys: HashMap<i64, i64> = family.iter().map(|(&c, &o)| (keys[c], keys[o])).collect();
    let max_distance = default_max_distance(Backbone::Lite0);
    let mut times = Vec::new();
    for run in 0..3 {
        let t = Instant::now();
        let found = groups(&store, max_distance).unwrap();
        let s = t.elapsed().as_secs_f64();
        times.push(s);
        if run == 0 {
            let (precision, recall) = pair_scores(&found, &family_keys);
            println!(
                "duplicates at max distance {max_distance}: {} groups, pair precision {precision:.3}, recall {recall:.3}",
                found.len()
            );
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "duplicates over {n} images on {} threads: median {:.2} s (runs {:?})",
        rayon::current_num_threads(),
        times[1],
        times.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>()
    );
}
