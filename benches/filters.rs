//! Filtered search through the folder store, the way `search --label`,
//! `--after` and `--camera` run it: synthetic clustered 1280-d vectors in a
//! real store (SQLite records with dates, labels and cameras; the HNSW graph
//! above 20k images), one query at a time on one thread. For each filter
//! (none; 50% at random or following the content, 25%, 10%, 2% and 0.5%
//! of the images pass): p50/p99 latency, the
//! results returned of the 10 asked, and recall@10 against an exact scan of
//! the images that pass.
//!
//! `cargo bench --bench filters` (N = 30k; `IMGSEARCH_BENCH_N` for more;
//! `IMGSEARCH_BENCH_ORDER=interleaved` for rows not in walk order, see below);
//! `IMGSEARCH_BENCH_PG=<admin url>` runs it on PostgreSQL instead (a fresh
//! database; `scripts/pg-test-server start DIR` prints a URL).
//! `IMGSEARCH_BENCH_KIND=text` searches a text side instead (a linear
//! projection onto the first 384 coordinates, standing in for zero-shot).
//! The store keeps vectors in memory as `serve` does;
//! `IMGSEARCH_BENCH_KEEP=0` searches as a one-shot command does (on
//! PostgreSQL, narrow filters then score in SQL).

use std::time::Instant;

use imgsearch::metadata::PhotoMeta;
use imgsearch::store::{Filter, ImageStore, NewImage, NewVector, Projection, Store, StoreQuery, TextSide};

mod common;
use common::{clustered, pct, queries, Rng};

fn main() {
    let n: usize = std::env::var("IMGSEARCH_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(30_000);
    let dim = 1280;
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let vectors = clustered(n, dim, (n / 100).max(10), &mut rng);
    let dir = tempfile::tempdir().unwrap();
    // The folder store, or with IMGSEARCH_BENCH_PG a fresh PostgreSQL database.
    let mut store: Box<dyn ImageStore> = match std::env::var("IMGSEARCH_BENCH_PG") {
        Ok(admin) => {
            let name = format!("imgsearch_filters_{}", std::process::id());
            let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("the server answers");
            client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
            client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
            let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
            println!("store: PostgreSQL ({url})");
            Box::new(imgsearch::store::postgres::PgStore::open(&url, "lite0", dim).unwrap())
        }
        Err(_) => Box::new(Store::open(dir.path(), "lite0", dim).unwrap()),
    };
    let start = Instant::now();
    // The images go in as `imgsearch index` stores them: in walk order, a
    // folder's after the previous folder's. IMGSEARCH_BENCH_ORDER=interleaved
    // stores image i i-th instead, so that each folder's rows are spread
    // over the whole table (as a folder filled a little at a time over
    // many runs would be): the worst case for a scan of one folder's rows.
    let mut order: Vec<usize> = (0..n).collect();
    let interleaved = std::env::var("IMGSEARCH_BENCH_ORDER").is_ok_and(|o| o == "interleaved");
    if !interleaved {
        order.sort_by_key(|&i| (i % 10, i));
    }
    println!("rows stored {}", if interleaved { "interleaved" } else { "in walk order" });
    // Image i: label "l{i % 200}" (0.5% each), taken on day i % 1000 of 2020+, cameras as below.
    for chunk in order.chunks(1000) {
        let batch: Vec<NewImage> = chunk
            .iter()
            .map(|&i| {
                let v = &vectors[i * dim..(i + 1) * dim];
                NewImage {
                    path: format!("/photos/{}/{i}.jpg", i % 10),
                    // A content hash as `index` writes it (64 hex digits):
                    // the passing images' contents travel in full.
                    hash: format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(i.to_le_bytes())),
                    size: 1,
                    mtime: 0,
                    label: format!("l{}", i % 200),
                    vector: NewVector::Embedding(v.to_vec()),
                    meta: PhotoMeta {
                        taken: Some(1_577_836_800 + (i % 1000) as i64 * 86_400),
                        // "iPhone" follows the content (even images, so even
                        // clusters only: a cluster is image i * 7919 mod an even
                        // count); "Canon" (50 %) and "other" (25 %) do not.
                        camera: Some({
                            let h = (i as u64).wrapping_mul(2_654_435_761);
                            let iphone = (i % 2 == 0).then_some("Apple iPhone 12");
                            let brand = match (h >> 9 & 1 == 0, h >> 10 & 1 == 0) {
                                (true, _) => Some("Canon"),
                                (false, true) => Some("other"),
                                (false, false) => None,
                            };
                            let camera: Vec<&str> = iphone.into_iter().chain(brand).collect();
                            if camera.is_empty() {
                                "Nikon".to_owned()
                            } else {
                                camera.join(" / ")
                            }
                        }),
                        width: None,
                        height: None,
                    },
                }
            })
            .collect();
        store.add_batch(&batch).unwrap();
    }
    let graph = store.upkeep().unwrap();
    // As `serve` does: a database then scores a narrow filter's images in
    // this process (IMGSEARCH_BENCH_KEEP=0: in SQL, as one-shot commands do).
    if std::env::var("IMGSEARCH_BENCH_KEEP").map_or(true, |k| k != "0") {
        store.keep_vectors();
    }
    println!("{n} images stored and indexed in {:.1} s (HNSW graph: {graph:?} rows)", start.elapsed().as_secs_f64());
    let text = std::env::var("IMGSEARCH_BENCH_KIND").is_ok_and(|k| k == "text");
    let side = TextSide { name: "zero-shot", model_id: None, projection: &Prefix };
    if text {
        let start = Instant::now();
        store.sync_text_side(&side, None).unwrap();
        println!("text side: {} rows in {:.1} s", store.text_side_len(&side).unwrap(), start.elapsed().as_secs_f64());
    }
    let qs: &'static [f32] = queries(200, n, dim, &mut rng).leak();
    let day = |d: i64| 1_577_836_800 + d * 86_400;
    let cases = [
        ("no filter", Filter::default()),
        ("camera (50%)", Filter { camera: Some("canon".into()), ..Default::default() }),
        // Every second cluster only: half the queries have no passing image nearby.
        ("camera (50%, follows content)", Filter { camera: Some("iphone".into()), ..Default::default() }),
        ("camera (25%)", Filter { camera: Some("other".into()), ..Default::default() }),
        // A folder: image i lies in folder i % 10 and cluster i * 7919 % clusters,
        // so a folder's images fill a tenth of the clusters, as a trip's do.
        ("folder (10%)", Filter { under: Some("/photos/3".into()), ..Default::default() }),
        ("dates (2%)", Filter { after: Some(day(100)), before: Some(day(120)), ..Default::default() }),
        ("label (0.5%)", Filter { label: Some("l7".into()), ..Default::default() }),
    ];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    // Round robin: each query runs under every filter in turn, so a slow
    // stretch of the machine (or of the server) falls on all of them alike
    // and the ratios to the unfiltered p50 hold. Each query starts at the
    // next filter, so that no filter always searches first, when the
    // caches lack the graph nodes near that query (a search for the same
    // query again walked them in 0.4 ms where the first took 2 ms).
    let mut ms = vec![Vec::new(); cases.len()];
    let (mut got, mut hit) = (vec![0usize; cases.len()], vec![0usize; cases.len()]);
    pool.install(|| {
        // Here, in the one thread: a text side holds a `dyn Projection`.
        let side = TextSide { name: "zero-shot", model_id: None, projection: &Prefix };
        let query = |q: &'static [f32]| match text {
            true => StoreQuery::Text { side, vector: &q[..TEXT_DIM] },
            false => StoreQuery::Cnn(q),
        };
        let mut found = vec![Vec::new(); qs.len() / dim * cases.len()];
        for (j, q) in qs.chunks_exact(dim).enumerate() {
            for c in (0..cases.len()).map(|c| (c + j) % cases.len()) {
                let t = Instant::now();
                let hits = store.search(&query(q), 10, &cases[c].1).unwrap();
                ms[c].push(t.elapsed().as_secs_f64() * 1e3);
                got[c] += hits.len().min(10);
                found[j * cases.len() + c] = hits.iter().take(10).map(|(r, _)| r.key).collect::<Vec<i64>>();
            }
        }
        // The truth: an exact scan of the images that pass, in a pass of
        // its own, after the timed one. Interleaved, each full scan (all
        // 10k vectors for the unfiltered truth, 50 MB) pushed the timed
        // queries' pages out of a default server's 128 MB of buffers, so
        // the bench timed cache misses that no real search sequence has.
        store.set_exact(true);
        let mut found = found.iter();
        for q in qs.chunks_exact(dim) {
            for (c, (_, filter)) in cases.iter().enumerate() {
                let truth = store.search(&query(q), 10, filter).unwrap();
                let truth: Vec<i64> = truth.iter().take(10).map(|(r, _)| r.key).collect();
                hit[c] += found.next().unwrap().iter().filter(|k| truth.contains(k)).count();
            }
        }
        store.set_exact(false);
    });
    let mut base_p50 = None;
    for (c, (name, _)) in cases.iter().enumerate() {
        ms[c].sort_by(f64::total_cmp);
        let p50 = pct(&ms[c], 0.5);
        let base = *base_p50.get_or_insert(p50);
        println!(
            "{name:<30} p50 {p50:6.3} ms  p99 {:6.3} ms  ({:.2}x unfiltered)  results {:.1}/10  recall@10 {:.3}",
            pct(&ms[c], 0.99),
            p50 / base,
            got[c] as f64 / 200.0,
            hit[c] as f64 / got[c].max(1) as f64
        );
    }
}

/// The text side's width.
const TEXT_DIM: usize = 384;

/// A linear projection onto the first `TEXT_DIM` coordinates.
struct Prefix;

impl Projection for Prefix {
    fn in_dim(&self) -> usize {
        1280
    }
    fn out_dim(&self) -> usize {
        TEXT_DIM
    }
    fn fingerprint(&self) -> [u8; 16] {
        [0x7e; 16]
    }
    fn project(&self, embeddings: &[f32]) -> imgsearch::Result<Vec<f32>> {
        Ok(embeddings.chunks_exact(1280).flat_map(|r| r[..TEXT_DIM].iter().copied()).collect())
    }
}
