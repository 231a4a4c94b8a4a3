//! Joint-model training speed: the tutorial's recipe (50 epochs, batch 32,
//! SGD + Nesterov, 1280 -> 2000 -> 50) on 800 synthetic examples of 20
//! classes, the size of the Pascal training split. Median of 3 runs, and
//! the time per optimiser step.
//!
//! `cargo bench --bench train` (`IMGSEARCH_BENCH_EPOCHS` to shorten).

use std::time::Instant;

use imgsearch::joint::{train, OptimizerKind, TrainOptions};

fn main() {
    let epochs: usize = std::env::var("IMGSEARCH_BENCH_EPOCHS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let (n, in_dim, out_dim, classes) = (800usize, 1280usize, 50usize, 20usize);
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let centres: Vec<f32> = (0..classes * in_dim).map(|_| next() * 2.0).collect();
    let targets: Vec<f32> = (0..classes * out_dim).map(|_| next() - 0.5).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..n {
        let c = i % classes;
        x.extend(centres[c * in_dim..(c + 1) * in_dim].iter().map(|v| v + next()));
        y.extend_from_slice(&targets[c * out_dim..(c + 1) * out_dim]);
    }
    for optimizer in [OptimizerKind::Sgd, OptimizerKind::Adam] {
        let options = TrainOptions {
            epochs,
            optimizer,
            learning_rate: if optimizer == OptimizerKind::Sgd { 0.01 } else { 0.001 },
            ..Default::default()
        };
        let mut runs = Vec::new();
        let mut steps = 0;
        let mut loss = 0.0;
        for _ in 0..3 {
            let t = Instant::now();
            let (_, report) = train(&x, &y, in_dim, out_dim, &options, |_, _| {}).unwrap();
            runs.push(t.elapsed().as_secs_f64());
            steps = report.steps;
            loss = report.losses.last().unwrap().loss;
        }
        runs.sort_by(f64::total_cmp);
        println!(
            "train {optimizer:?}: {n} examples, {epochs} epochs, {steps} steps: median {:.2} s (min {:.2}, max {:.2}), {:.2} ms/step, final loss {loss:.4}",
            runs[1],
            runs[0],
            runs[2],
            runs[1] * 1e3 / steps as f64
        );
    }
}
