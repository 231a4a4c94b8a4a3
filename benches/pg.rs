//! The PostgreSQL store beside the embedded index, on the same vectors in
//! the same run: N = 100k synthetic clustered 1280-d unit vectors (the
//! `index` bench's), the insert rate through `PgStore::add_batch` (batches
//! of 500, the HNSW index maintained as rows arrive), and query p50/p99 on
//! one client with recall@10 against exact f32 search, for pgvector's HNSW
//! and our int8 HNSW at the same ef. Then a joint model's save on that
//! store (every vector projected, here to its first 384 components, written
//! and indexed in one transaction) and joint-space query p50/p99/recall.
//!
//! `IMGSEARCH_BENCH_PG=postgres://user@host:port/postgres cargo bench --bench pg`
//! (an admin URL: the bench makes a fresh database; `scripts/pg-test-server
//! start DIR` prints one). `IMGSEARCH_BENCH_N` sets N.

use std::time::Instant;

use imgsearch::index::{ExactIndex, HnswIndex, HnswParams};
use imgsearch::store::postgres::PgStore;
use imgsearch::store::{ImageStore, NewImage, NewVector};

mod common;
use common::{clustered, pct, time_queries, Rng};

fn main() {
    let Some(admin) = std::env::var("IMGSEARCH_BENCH_PG").or_else(|_| std::env::var("IMGSEARCH_TEST_PG")).ok() else {
        eprintln!("set IMGSEARCH_BENCH_PG to a PostgreSQL admin URL (scripts/pg-test-server start DIR prints one)");
        return;
    };
    let n: usize = std::env::var("IMGSEARCH_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let (dim, n_queries) = (1280, 200);
    let efs = [40, 100, 200];
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let vectors = clustered(n, dim, (n / 100).max(10), &mut rng);
    let queries = common::queries(n_queries, n, dim, &mut rng);
    let (truth, exact_ms) = time_queries(&ExactIndex::new(&vectors, dim), &queries, dim);
    println!("N = {n}, dim {dim}; exact scan, 1 thread: p50 {:.2} ms", pct(&exact_ms, 0.5));

    // Embedded: our HNSW over int8 copies, re-ranked in f32.
    let t = Instant::now();
    let mut hnsw = HnswIndex::build(&vectors, dim, HnswParams::default());
    println!("embedded HNSW build: {:.1} s ({} threads)", t.elapsed().as_secs_f64(), rayon::current_num_threads());
    for ef in efs {
        hnsw.set_ef_search(ef);
        let (found, ms) = time_queries(&hnsw.over(&vectors, dim), &queries, dim);
        println!(
            "embedded HNSW ef={ef}: p50 {:.3} ms, p99 {:.3} ms, recall@10 {:.3}",
            pct(&ms, 0.5),
            pct(&ms, 0.99),
            common::recall(&truth, &found)
        );
    }

    // PostgreSQL: a fresh database, rows through the store's own batch write.
    let name = format!("imgsearch_bench_{}", std::process::id());
    let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("the server answers");
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let mut store = PgStore::open(&url, "synthetic", dim).unwrap();
    let t = Instant::now();
    for (b, chunk) in vectors.chunks(500 * dim).enumerate() {
        let batch: Vec<NewImage> = chunk
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, v)| {
                let id = b * 500 + i;
                NewImage {
                    path: format!("/synthetic/{id}"),
                    hash: format!("{id:08x}"),
                    size: 0,
                    mtime: 0,
                    label: String::new(),
                    vector: NewVector::Embedding(v.to_vec()),
                    meta: Default::default(),
                }
            })
            .collect();
        store.add_batch(&batch).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!("PostgreSQL insert (HNSW index maintained): {n} rows in {secs:.1} s = {:.0} rows/s", n as f64 / secs);
    for ef in efs {
        store.set_ef_search(ef);
        let mut ms = Vec::new();
        let mut found = Vec::new();
        for q in queries.chunks_exact(dim) {
            let t = Instant::now();
            let hits = store.nearest(q, 10).unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            found.push(
                hits.iter()
                    .map(|(r, _)| r.path.rsplit('/').next().unwrap().parse::<usize>().unwrap())
                    .collect::<Vec<_>>(),
            );
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "PostgreSQL pgvector HNSW ef={ef}: p50 {:.3} ms, p99 {:.3} ms, recall@10 {:.3}",
            pct(&ms, 0.5),
            pct(&ms, 0.99),
            common::recall(&truth, &found)
        );
    }
    // A model save: every stored vector projected and written, then the
    // joint HNSW index built, in one transaction; then joint-space queries.
    const OUT: usize = 384;
    let project = |x: &[f32]| -> imgsearch::Result<Vec<f32>> {
        Ok(x.chunks_exact(dim).flat_map(|r| r[..OUT].to_vec()).collect())
    };
    let t = Instant::now();
    let (id, rows) = store.save_model("{}", b"", "{}", OUT, &project).unwrap();
    println!(
        "PostgreSQL model save (model {id}): {rows} joint vectors projected, written and indexed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let unit = |v: &[f32]| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        v.iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let joint: Vec<f32> = vectors.chunks_exact(dim).flat_map(|r| unit(&r[..OUT])).collect();
    let joint_queries: Vec<f32> = queries.chunks_exact(dim).flat_map(|q| unit(&q[..OUT])).collect();
    let (joint_truth, _) = time_queries(&ExactIndex::new(&joint, OUT), &joint_queries, OUT);
    store.set_ef_search(imgsearch::store::postgres::DEFAULT_EF_SEARCH);
    let mut ms = Vec::new();
    let mut found = Vec::new();
    for q in joint_queries.chunks_exact(OUT) {
        let t = Instant::now();
        let hits = store.nearest_joint(id, q, 10, &Default::default()).unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        found.push(
            hits.iter().map(|(r, _)| r.path.rsplit('/').next().unwrap().parse::<usize>().unwrap()).collect::<Vec<_>>(),
        );
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "PostgreSQL joint space ({OUT}-d) HNSW ef={}: p50 {:.3} ms, p99 {:.3} ms, recall@10 {:.3}",
        imgsearch::store::postgres::DEFAULT_EF_SEARCH,
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        common::recall(&joint_truth, &found)
    );
    drop(store);
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
}
