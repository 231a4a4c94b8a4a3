//! Embedding throughput: forward pass alone (batched, all cores) and end to
//! end (decode + preprocess + forward) over the shared Pascal images.
//!
//! `cargo bench --bench embed` (needs `imgsearch models fetch`). Prints the
//! median of several runs as img/s. Environment:
//! - `IMGSEARCH_BENCH_BACKBONE` = lite0 (default) | lite2
//! - `IMGSEARCH_BENCH_RUNS` (default 5), `IMGSEARCH_BENCH_BATCH` (default 16)
//! - `IMGSEARCH_BENCH_PHASE` = forward | decode | e2e | both (default: forward and e2e) |
//!   agreement (the int8 or bf16 path against f32 on the real images)
//! - `IMGSEARCH_PRECISION=int8|bf16`: the int8 (VNNI) or bf16 (AMX) path
//!   where the CPU has it (default f32; `agreement` compares int8 unless bf16 is asked for)
//! - `IMGSEARCH_BENCH_DECODERS`: decoder threads (default one per core)

use std::path::PathBuf;
use std::time::Instant;

use imgsearch::backbone::Embedder;
use imgsearch::models;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let backbone = std::env::var("IMGSEARCH_BENCH_BACKBONE").unwrap_or_else(|_| "lite0".into());
    let runs: usize = std::env::var("IMGSEARCH_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let batch: usize = std::env::var("IMGSEARCH_BENCH_BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    let phase = std::env::var("IMGSEARCH_BENCH_PHASE").unwrap_or_else(|_| "both".into());
    let kind: imgsearch::backbone::Backbone = backbone.parse()?;
    let config = kind.config();
    let size = config.image_size;
    let weights = models::backbone_weights(&models::models_dir(None), kind);
    let mut embedder = Embedder::load(&weights, config)?
        .with_batch_size(batch)
        .with_precision(imgsearch::backbone::Precision::from_env());
    if let Some(t) = std::env::var("IMGSEARCH_BENCH_DECODERS").ok().and_then(|s| s.parse().ok()) {
        embedder = embedder.with_decode_threads(t);
    }
    println!(
        "backbone {backbone}, batch {batch}, {} rayon threads, median of {runs} runs",
        rayon::current_num_threads()
    );

    if phase == "forward" || phase == "both" {
        // Deterministic pseudo-images; 4 batches per run.
        let images: Vec<Vec<f32>> = (0..batch)
            .map(|i| (0..size * size * 3).map(|j| (((i * 7919 + j * 31) % 255) as f32 - 127.0) / 128.0).collect())
            .collect();
        embedder.embed_tensors(&images)?; // warm-up
        let mut rates = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            for _ in 0..4 {
                embedder.embed_tensors(&images)?;
            }
            rates.push((4 * batch) as f64 / t.elapsed().as_secs_f64());
        }
        println!(
            "forward: {:.1} img/s (median; runs {:?})",
            median(rates.clone()),
            rates.iter().map(|r| (r * 10.0).round() / 10.0).collect::<Vec<_>>()
        );
    }

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/pascal-sentences/images");
    if phase == "agreement" {
        // The int8 (or bf16) path against f32 on the 1000 real images:
        // top-1 equal, top-5 sets' overlap and equality, cosine of the
        // embeddings, image->image P@10 on the fixed split.
        let mut paths = Vec::new();
        for label in std::fs::read_dir(&root)? {
            for f in std::fs::read_dir(label?.path())? {
                paths.push(f?.path());
            }
        }
        paths.sort();
        use imgsearch::backbone::Precision;
        let exact = Embedder::load(&weights, kind.config())?.with_precision(Precision::F32);
        let fast_precision = match Precision::from_env() {
            Precision::Bf16 => Precision::Bf16,
            _ => Precision::Int8,
        };
        let embedder = Embedder::load(&weights, kind.config())?.with_precision(fast_precision);
        let embed = |e: &Embedder| {
            let mut out = vec![None; paths.len()];
            e.embed_files(&paths, |i, r| out[i] = r.ok());
            out
        };
        let (fast, slow) = (embed(&embedder), embed(&exact));
        let top5 = |l: &[f32]| {
            let mut idx: Vec<usize> = (0..l.len()).collect();
            idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
            idx.truncate(5);
            idx
        };
        let (mut n, mut top1, mut overlap, mut cosine, mut kept) = (0usize, 0usize, 0usize, 0f64, 0usize);
        let mut same = 0usize;
        for (a, b) in fast.iter().zip(&slow) {
            let (Some(a), Some(b)) = (a, b) else { continue };
            let (ta, tb) = (top5(&a.logits), top5(&b.logits));
            n += 1;
            top1 += (ta[0] == tb[0]) as usize;
            kept += ta.contains(&tb[0]) as usize;
            overlap += ta.iter().filter(|c| tb.contains(c)).count();
            same += ta.iter().all(|c| tb.contains(c)) as usize;
            let dot: f32 = a.embedding.iter().zip(&b.embedding).map(|(x, y)| x * y).sum();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            cosine += (dot / (norm(&a.embedding) * norm(&b.embedding))) as f64;
        }
        println!(
            "{:?} (runs {:?}) vs f32 over {n} images: top-1 equal {:.3}, f32's top-1 in its top-5 {:.3}, \
             top-5 overlap {:.3}, same top-5 set {:.3}, embedding cosine {:.5} (mean)",
            fast_precision,
            embedder.model().runs(),
            top1 as f64 / n as f64,
            kept as f64 / n as f64,
            overlap as f64 / (5 * n) as f64,
            same as f64 / n as f64,
            cosine / n as f64
        );
    }
    if phase == "decode" {
        // Decode + preprocess alone, one thread: the CPU cost decoding adds per image.
        let mut paths = Vec::new();
        for label in std::fs::read_dir(&root)? {
            for f in std::fs::read_dir(label?.path())? {
                paths.push(f?.path());
            }
        }
        let t = Instant::now();
        for p in &paths {
            embedder.preprocess().load(p)?;
        }
        println!("decode + preprocess, 1 thread: {:.1} img/s", paths.len() as f64 / t.elapsed().as_secs_f64());
    }

    if phase == "e2e" || phase == "both" {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/pascal-sentences/images");
        let mut paths = Vec::new();
        for label in std::fs::read_dir(&root)? {
            for f in std::fs::read_dir(label?.path())? {
                paths.push(f?.path());
            }
        }
        paths.sort();
        let mut rates = Vec::new();
        for _ in 0..runs.min(3) {
            let t = Instant::now();
            let mut ok = 0;
            embedder.embed_files(&paths, |_, r| ok += r.is_ok() as usize);
            assert_eq!(ok, paths.len(), "every Pascal image embeds");
            rates.push(paths.len() as f64 / t.elapsed().as_secs_f64());
        }
        println!(
            "end to end ({} images): {:.1} img/s (median; runs {:?})",
            paths.len(),
            median(rates.clone()),
            rates.iter().map(|r| (r * 10.0).round() / 10.0).collect::<Vec<_>>()
        );
    }
    Ok(())
}
