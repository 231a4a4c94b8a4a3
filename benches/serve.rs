//! Load on the HTTP service over loopback: text search and image-key search
//! over the 1000 Pascal images (Lite0, a joint model trained with the
//! default recipe), at 1, 8 and 64 concurrent keep-alive connections.
//! Prints req/s, p50 and p99 per case, errors, and resident memory before
//! and after. The server runs in this process; the load generator is a
//! minimal HTTP/1.1 client on its own runtime.
//!
//! `cargo bench --bench serve` (needs `imgsearch models fetch`).
//! `IMGSEARCH_BENCH_SECONDS` (default 5) per case; `IMGSEARCH_BENCH_DB`
//! reuses an index with a model instead of building one in a temp dir.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// One keep-alive connection sending `paths` round-robin until `until`.
async fn client(
    addr: std::net::SocketAddr,
    paths: Arc<Vec<String>>,
    offset: usize,
    until: Instant,
) -> (Vec<f64>, usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut stream = BufReader::new(stream);
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let mut i = offset;
    while Instant::now() < until {
        let path = &paths[i % paths.len()];
        i += 1;
        let start = Instant::now();
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        stream.get_mut().write_all(request.as_bytes()).await.unwrap();
        let mut status = String::new();
        stream.read_line(&mut status).await.unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
        if !status.contains(" 200 ") {
            errors += 1;
        }
    }
    (latencies, errors)
}

fn build_db(dir: &std::path::Path) -> PathBuf {
    let images = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/pascal-sentences/images");
    let db = dir.join("db");
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/imgsearch");
    let bin = std::env::var("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("release/imgsearch")).unwrap_or(bin);
    let out = std::process::Command::new(&bin)
        .arg("--db")
        .arg(&db)
        .args(["train", "--data"])
        .arg(&images)
        .output()
        .expect("run imgsearch (cargo build --release first)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    db
}

fn main() {
    let seconds: f64 = std::env::var("IMGSEARCH_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let tmp = tempfile::tempdir().unwrap();
    let db = std::env::var("IMGSEARCH_BENCH_DB").map(PathBuf::from).unwrap_or_else(|_| build_db(tmp.path()));
    let models = imgsearch::models::models_dir(None);
    let config = imgsearch::backbone::Config::lite0();
    let embedder =
        imgsearch::backbone::Embedder::load(&imgsearch::models::backbone_weights(&models, config.kind), config)
            .unwrap();
    let words = imgsearch::words::open(&models, None).unwrap();
    let options = imgsearch::server::Options { queue: 256, ..Default::default() };
    let library = imgsearch::library::Library::open(options.settings(&db), imgsearch::library::Access::Write).unwrap();
    let state = Arc::new(imgsearch::server::State::load(library, embedder, words, options).unwrap());

    let server_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    server_rt.spawn(async move { axum::serve(listener, imgsearch::server::app(state)).await.unwrap() });

    let words_q = ["dog", "cat%20sofa", "ocean", "street", "cat%20-sofa", "horse", "bottle", "train"];
    let text: Vec<String> = words_q.iter().map(|w| format!("/api/search?text={w}&k=10")).collect();
    let keys: Vec<String> = (1..=200).map(|k| format!("/api/search?key={}&k=10", k * 5)).collect();
    let client_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // Warm up (page cache, thumbnails are not involved).
    client_rt.block_on(client(addr, Arc::new(text.clone()), 0, Instant::now() + Duration::from_millis(500)));
    let rss_before = rss_mb();
    let (text, keys) = (Arc::new(text), Arc::new(keys));
    let mut after = Vec::new();
    for round in 1..=2 {
        println!("round {round}");
        for (name, paths) in [("text search", text.clone()), ("image-key search", keys.clone())] {
            for conns in [1usize, 8, 64] {
                let until = Instant::now() + Duration::from_secs_f64(seconds);
                let start = Instant::now();
                let results = client_rt.block_on(async {
                    let tasks: Vec<_> =
                        (0..conns).map(|c| tokio::spawn(client(addr, paths.clone(), c * 7, until))).collect();
                    let mut out = Vec::new();
                    for t in tasks {
                        out.push(t.await.unwrap());
                    }
                    out
                });
                let elapsed = start.elapsed().as_secs_f64();
                let mut lat: Vec<f64> = results.iter().flat_map(|(l, _)| l.iter().copied()).collect();
                let errors: usize = results.iter().map(|(_, e)| e).sum();
                lat.sort_by(f64::total_cmp);
                let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
                println!(
                "{name:<17} {conns:>2} conns: {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} requests, {errors} errors)",
                lat.len() as f64 / elapsed,
                pct(0.5),
                pct(0.99),
                lat.len()
            );
            }
        }
        after.push(format!("{:.0} MB", rss_mb()));
    }
    println!("resident memory: {rss_before:.0} MB after warm-up, after each round: {}", after.join(", "));
}
