//! Sentence encoder speed: one 12-word query on one core (p50, p99 over
//! 100), and batch throughput encoding the Pascal captions (sentences/s,
//! batches of 32, all cores).
//!
//! `cargo bench --bench text` (needs `imgsearch models fetch`).

use std::time::Instant;

use imgsearch::text::{SentenceEncoder, TextEncoder};

fn main() {
    let models = imgsearch::models::models_dir(None);
    let encoder = SentenceEncoder::load(&SentenceEncoder::dir(&models)).expect("run `imgsearch models fetch`");
    let query = "two brown dogs are playing together outside in the deep white snow";
    assert_eq!(query.split_whitespace().count(), 12);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut lat: Vec<f64> = pool.install(|| {
        let _ = encoder.encode(&[query]).unwrap();
        (0..100)
            .map(|_| {
                let t = Instant::now();
                let _ = encoder.encode(&[query]).unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect()
    });
    lat.sort_by(f64::total_cmp);
    println!("query, 12 words, 1 thread: p50 {:.2} ms, p99 {:.2} ms (100 runs)", lat[50], lat[99]);

    let captions = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/pascal-sentences/captions.json");
    let all = imgsearch::joint::data::read_captions(&captions).unwrap();
    let mut texts: Vec<&str> = all.values().flatten().map(String::as_str).collect();
    texts.sort_unstable();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let _ = encoder.encode(&texts).unwrap();
        runs.push(t.elapsed().as_secs_f64());
    }
    runs.sort_by(f64::total_cmp);
    println!(
        "batch: {} captions in {:.2} s median of 3 = {:.0} sentences/s ({} threads)",
        texts.len(),
        runs[1],
        texts.len() as f64 / runs[1],
        rayon::current_num_threads()
    );
}

use std::path::PathBuf;
