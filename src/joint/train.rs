//! Training the joint head on frozen CNN embeddings (candle autograd).
//!
//! The tutorial's head: `Linear(in -> hidden)`, `BatchNorm`, `ReLU`,
//! `Dropout`, `Linear(hidden -> word dim)`, `BatchNorm`; the loss is the
//! negative cosine similarity between the output and the label's word
//! vector. Everything random (initialisation, shuffling, dropout masks) comes
//! from one seeded ChaCha8 stream, and candle's CPU kernels are
//! deterministic, so the same inputs and options give the same weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{BatchNorm, ModuleT};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// PyTorch's batch-norm defaults (the reference recipe was PyTorch).
const BN_EPS: f64 = 1e-5;
pub(crate) const BN_EPS_F32: f32 = BN_EPS as f32;
const BN_MOMENTUM: f64 = 0.1;

/// The optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with (Nesterov) momentum, PyTorch's update rule.
    Sgd,
    /// Adam (candle's AdamW with no weight decay).
    Adam,
}

/// How to train. [`Default`] is the tutorial's recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub hidden: usize,
    pub dropout: f64,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 50,
            batch_size: 32,
            optimizer: OptimizerKind::Sgd,
            learning_rate: 0.01,
            momentum: 0.9,
            nesterov: true,
            hidden: 2000,
            dropout: 0.5,
            seed: 42,
        }
    }
}

/// The head's parameters and batch-norm statistics, by name:
/// `fc1.weight [hidden, in]`, `fc1.bias`, `bn1.{weight,bias,running_mean,running_var}`,
/// `fc2.weight [out, hidden]`, `fc2.bias`, `bn2.*`.
pub type HeadTensors = HashMap<String, Tensor>;

/// The head during training: parameters as candle `Var`s.
struct Head {
    /// Weights stored `[in, out]`, so the forward pass is `x @ w` and the
    /// weight gradient arrives contiguous (candle's `Linear` multiplies by a
    /// transposed view, and accumulating its gradient was a strided copy of
    /// the 10 MB weight every step).
    fc1: (Tensor, Tensor),
    bn1: BatchNorm,
    fc2: (Tensor, Tensor),
    bn2: BatchNorm,
    params: Vec<(String, Var)>,
}

impl Head {
    /// PyTorch's initialisation: linear weights and biases uniform in
    /// ±1/sqrt(fan_in), batch-norm scale 1 and shift 0.
    fn init(in_dim: usize, hidden: usize, out_dim: usize, rng: &mut ChaCha8Rng) -> Result<Self> {
        let dev = Device::Cpu;
        let uniform = |rng: &mut ChaCha8Rng, n: usize, fan_in: usize| -> Vec<f32> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let var = |v: Vec<f32>, shape: &[usize]| Var::from_tensor(&Tensor::from_vec(v, shape, &dev)?);
        // Drawn in PyTorch's [out, in] order, stored transposed.
        let transposed = |v: Vec<f32>, rows: usize, cols: usize| -> Vec<f32> {
            (0..cols * rows).map(|i| v[(i % rows) * cols + i / rows]).collect()
        };
        let w1 = var(transposed(uniform(rng, hidden * in_dim, in_dim), hidden, in_dim), &[in_dim, hidden])?;
        let b1 = var(uniform(rng, hidden, in_dim), &[hidden])?;
        let w2 = var(transposed(uniform(rng, out_dim * hidden, hidden), out_dim, hidden), &[hidden, out_dim])?;
        let b2 = var(uniform(rng, out_dim, hidden), &[out_dim])?;
        let g1 = var(vec![1.0; hidden], &[hidden])?;
        let s1 = var(vec![0.0; hidden], &[hidden])?;
        let g2 = var(vec![1.0; out_dim], &[out_dim])?;
        let s2 = var(vec![0.0; out_dim], &[out_dim])?;
        let bn = |n: usize, g: &Var, s: &Var| {
            BatchNorm::new_with_momentum(
                n,
                Tensor::zeros(n, DType::F32, &dev)?,
                Tensor::ones(n, DType::F32, &dev)?,
                g.as_tensor().clone(),
                s.as_tensor().clone(),
                BN_EPS,
                BN_MOMENTUM,
            )
        };
        Ok(Self {
            fc1: (w1.as_tensor().clone(), b1.as_tensor().clone()),
            bn1: bn(hidden, &g1, &s1)?,
            fc2: (w2.as_tensor().clone(), b2.as_tensor().clone()),
            bn2: bn(out_dim, &g2, &s2)?,
            params: vec![
                ("fc1.weight".into(), w1),
                ("fc1.bias".into(), b1),
                ("bn1.weight".into(), g1),
                ("bn1.bias".into(), s1),
                ("fc2.weight".into(), w2),
                ("fc2.bias".into(), b2),
                ("bn2.weight".into(), g2),
                ("bn2.bias".into(), s2),
            ],
        })
    }

    /// Training-mode forward pass; `keep` is the dropout mask already scaled by 1/(1-p).
    fn forward_train(&self, x: &Tensor, keep: Option<&Tensor>) -> Result<Tensor> {
        let linear = |x: &Tensor, (w, b): &(Tensor, Tensor)| x.matmul(w)?.broadcast_add(b);
        let h = self.bn1.forward_t(&linear(x, &self.fc1)?, true)?.relu()?;
        let h = match keep {
            Some(mask) => h.mul(mask)?,
            None => h,
        };
        Ok(self.bn2.forward_t(&linear(&h, &self.fc2)?, true)?)
    }

    fn tensors(&self) -> Result<HeadTensors> {
        // Saved in PyTorch's layout: linear weights [out, in].
        let mut out: HeadTensors = self
            .params
            .iter()
            .map(|(n, v)| {
                let t = v.as_detached_tensor();
                let t = if n.ends_with(".weight") && n.starts_with("fc") { t.t()?.contiguous()? } else { t };
                Ok((n.clone(), t))
            })
            .collect::<Result<_>>()?;
        for (name, bn) in [("bn1", &self.bn1), ("bn2", &self.bn2)] {
            out.insert(format!("{name}.running_mean"), bn.running_mean().detach());
            out.insert(format!("{name}.running_var"), bn.running_var().detach());
        }
        Ok(out)
    }
}

/// The update rule, PyTorch's definitions:
/// - SGD: `buf = m * buf + g` (the first step `buf = g`), then a step along
///   `g + m * buf` (Nesterov) or `buf`;
/// - Adam: bias-corrected first and second moments, no weight decay.
#[derive(Debug, Clone, Copy)]
enum Rule {
    Sgd { lr: f32, momentum: f32, nesterov: bool },
    Adam { lr: f32, beta1: f32, beta2: f32, eps: f32 },
}

/// The optimiser, updating each parameter in place in one fused pass.
///
/// Why our own: candle-nn's `SGD` has no momentum, and building the update
/// from tensor ops allocates ~5 temporaries the size of the 1280x2000
/// weight per step; measured with `cargo bench --bench train` (10 epochs),
/// candle-nn's AdamW took 139 ms/step against 41 ms/step for the same loop
/// with glibc's heap trimming off, most of it in element-wise maps.
struct Optimizer {
    rule: Rule,
    vars: Vec<Var>,
    /// Per parameter: the momentum buffer (SGD) or the two moments (Adam).
    state: Vec<std::cell::RefCell<Vec<Vec<f32>>>>,
    step: std::cell::Cell<i32>,
}

struct ParamUpdate<'a> {
    rule: Rule,
    state: &'a std::cell::RefCell<Vec<Vec<f32>>>,
    step: i32,
}

impl candle_core::InplaceOp2 for ParamUpdate<'_> {
    fn name(&self) -> &'static str {
        "imgsearch-param-update"
    }

    fn cpu_fwd(
        &self,
        p: &mut candle_core::CpuStorage,
        lp: &candle_core::Layout,
        g: &candle_core::CpuStorage,
        lg: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::CpuStorage::F32;
        use rayon::prelude::*;
        let (F32(p), F32(g)) = (p, g) else { candle_core::bail!("parameter update: f32 only") };
        let (Some((ps, pe)), Some((gs, ge))) = (lp.contiguous_offsets(), lg.contiguous_offsets()) else {
            candle_core::bail!("parameter update: contiguous tensors only")
        };
        let (p, g) = (&mut p[ps..pe], &g[gs..ge]);
        let mut state = self.state.borrow_mut();
        const CHUNK: usize = 1 << 16;
        match self.rule {
            Rule::Sgd { lr, momentum, nesterov } => {
                if state.is_empty() {
                    state.push(g.to_vec());
                } else {
                    state[0].par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(b, g)| {
                        b.iter_mut().zip(g).for_each(|(b, g)| *b = momentum * *b + g);
                    });
                }
                let buf = &state[0];
                p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(buf.par_chunks(CHUNK)).for_each(|((p, g), b)| {
                    for ((p, g), b) in p.iter_mut().zip(g).zip(b) {
                        *p -= lr * if nesterov { g + momentum * b } else { *b };
                    }
                });
            }
            Rule::Adam { lr, beta1, beta2, eps } => {
                if state.is_empty() {
                    state.push(vec![0.0; g.len()]);
                    state.push(vec![0.0; g.len()]);
                }
                let (c1, c2) = (1.0 - beta1.powi(self.step), 1.0 - beta2.powi(self.step));
                let (m, v) = state.split_at_mut(1);
                p.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .zip(m[0].par_chunks_mut(CHUNK))
                    .zip(v[0].par_chunks_mut(CHUNK))
                    .for_each(|(((p, g), m), v)| {
                        for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                            *m = beta1 * *m + (1.0 - beta1) * g;
                            *v = beta2 * *v + (1.0 - beta2) * g * g;
                            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
                        }
                    });
            }
        }
        Ok(())
    }
}

impl Optimizer {
    fn new(rule: Rule, vars: Vec<Var>) -> Self {
        let state = vars.iter().map(|_| Default::default()).collect();
        Self { rule, vars, state, step: std::cell::Cell::new(0) }
    }

    fn step(&self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        self.step.set(self.step.get() + 1);
        for (var, state) in self.vars.iter().zip(&self.state) {
            let Some(g) = grads.get(var) else { continue };
            let g = g.contiguous()?;
            var.as_tensor().inplace_op2(&g, &ParamUpdate { rule: self.rule, state, step: self.step.get() })?;
        }
        Ok(())
    }
}

/// Every step allocates and frees tensors the size of the first layer's
/// weights (10 MB). glibc serves those with mmap and returns freed heap
/// top to the kernel, so each step page-faults them in again: 74 ms/step
/// against 18 ms/step with these limits (`cargo bench --bench train`, 4
/// epochs). Raising the thresholds keeps up to 64 MB of freed memory for reuse.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// One epoch's mean training loss (negative cosine, so -1 is perfect).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EpochLoss {
    pub epoch: usize,
    pub loss: f64,
}

/// What training did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub examples: usize,
    pub steps: usize,
    pub seconds: f64,
    pub losses: Vec<EpochLoss>,
}

/// Trains the head on `features` (`[n, in_dim]`, row-major) to predict
/// `targets` (`[n, out_dim]`, any length: the loss is a cosine).
/// `on_epoch(epoch, mean_loss)` is called after every epoch.
pub fn train(
    features: &[f32],
    targets: &[f32],
    in_dim: usize,
    out_dim: usize,
    options: &TrainOptions,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<(HeadTensors, TrainReport)> {
    let n = features.len() / in_dim;
    if n < 2 || features.len() != n * in_dim || targets.len() != n * out_dim {
        return Err(Error::Msg(format!(
            "training needs at least 2 examples with {in_dim}-d features and {out_dim}-d targets (got {n})"
        )));
    }
    if options.batch_size < 2 || options.epochs == 0 || !(0.0..1.0).contains(&options.dropout) {
        return Err(Error::Msg("training needs a batch size >= 2, >= 1 epoch and a dropout in [0, 1)".into()));
    }
    keep_freed_memory();
    let start = std::time::Instant::now();
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let head = Head::init(in_dim, options.hidden, out_dim, &mut rng)?;
    let vars: Vec<Var> = head.params.iter().map(|(_, v)| v.clone()).collect();
    let lr = options.learning_rate as f32;
    let rule = match options.optimizer {
        OptimizerKind::Sgd => Rule::Sgd { lr, momentum: options.momentum as f32, nesterov: options.nesterov },
        OptimizerKind::Adam => Rule::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8 },
    };
    let optimizer = Optimizer::new(rule, vars);
    let x_all = Tensor::from_slice(features, (n, in_dim), &dev)?;
    // Unit targets: the cosine is then a dot product over the output's norm.
    let unit_targets: Vec<f32> = targets
        .chunks_exact(out_dim)
        .flat_map(|t| {
            let norm = t.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            t.iter().map(move |v| v / norm)
        })
        .collect();
    let y_all = Tensor::from_vec(unit_targets, (n, out_dim), &dev)?;
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut losses = Vec::with_capacity(options.epochs);
    let mut steps = 0;
    let keep_scale = 1.0 / (1.0 - options.dropout) as f32;
    for epoch in 1..=options.epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut batches) = (0.0, 0usize);
        for batch in order.chunks(options.batch_size) {
            // Batch norm needs two examples; a last batch of one is dropped.
            if batch.len() < 2 {
                continue;
            }
            let idx = Tensor::from_slice(batch, batch.len(), &dev)?;
            let (x, y) = (x_all.index_select(&idx, 0)?, y_all.index_select(&idx, 0)?);
            let mask = if options.dropout > 0.0 {
                let m: Vec<f32> = (0..batch.len() * options.hidden)
                    .map(|_| if rng.random::<f64>() >= options.dropout { keep_scale } else { 0.0 })
                    .collect();
                Some(Tensor::from_vec(m, (batch.len(), options.hidden), &dev)?)
            } else {
                None
            };
            let out = head.forward_train(&x, mask.as_ref())?;
            let norm = out.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-8, f64::INFINITY)?;
            let cos = (out * &y)?.sum_keepdim(D::Minus1)?.div(&norm)?;
            let loss = cos.mean_all()?.neg()?;
            let grads = loss.backward()?;
            optimizer.step(&grads)?;
            sum += loss.to_scalar::<f32>()? as f64;
            batches += 1;
            steps += 1;
        }
        let mean = sum / batches.max(1) as f64;
        losses.push(EpochLoss { epoch, loss: mean });
        on_epoch(epoch, mean);
    }
    let report = TrainReport { examples: n, steps, seconds: start.elapsed().as_secs_f64(), losses };
    Ok((head.tensors()?, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters of features with two target directions.
    fn toy() -> (Vec<f32>, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..64 {
            let class = i % 2;
            for d in 0..8 {
                let centre = if d % 2 == class { 2.0 } else { 0.0 };
                x.push(centre + rng.random_range(-0.5f32..0.5));
            }
            y.extend(if class == 0 { [1.0f32, 0.0, 0.0] } else { [0.0, 1.0, 0.0] });
        }
        (x, y)
    }

    fn small() -> TrainOptions {
        TrainOptions { epochs: 15, batch_size: 8, hidden: 16, ..Default::default() }
    }

    #[test]
    fn loss_falls_towards_minus_one() {
        let (x, y) = toy();
        let (_, report) = train(&x, &y, 8, 3, &small(), |_, _| {}).unwrap();
        let first = report.losses[0].loss;
        let last = report.losses.last().unwrap().loss;
        assert!(last < first - 0.3, "loss {first} -> {last}");
        assert!(last < -0.8, "final loss {last}");
        assert_eq!(report.steps, 15 * 8);
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let (x, y) = toy();
        let weights = |seed| {
            let (t, _) = train(&x, &y, 8, 3, &TrainOptions { seed, ..small() }, |_, _| {}).unwrap();
            t["fc2.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(weights(1), weights(1));
        assert_ne!(weights(1), weights(2));
    }

    #[test]
    fn adam_trains_too() {
        let (x, y) = toy();
        let options = TrainOptions { optimizer: OptimizerKind::Adam, learning_rate: 0.01, ..small() };
        let (_, report) = train(&x, &y, 8, 3, &options, |_, _| {}).unwrap();
        assert!(report.losses.last().unwrap().loss < -0.8);
    }

    #[test]
    fn nesterov_step_matches_pytorch_rule() {
        // p=1, g=2, m=0.9, lr=0.1: buf=2, d=2+1.8=3.8, p=1-0.38=0.62;
        // second step with g=2: buf=0.9*2+2=3.8, d=2+3.42=5.42, p=0.62-0.542.
        let p = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let sgd = Optimizer::new(Rule::Sgd { lr: 0.1, momentum: 0.9, nesterov: true }, vec![p.clone()]);
        for _ in 0..2 {
            let loss = (p.as_tensor() * 2.0).unwrap().sum_all().unwrap();
            sgd.step(&loss.backward().unwrap()).unwrap();
        }
        let v = p.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((v - (0.62 - 0.542)).abs() < 1e-5, "{v}");
    }

    #[test]
    fn adam_first_step_moves_each_weight_by_lr() {
        // Bias correction makes Adam's first step lr * g / |g| = lr * sign(g).
        let p = Var::new(&[1.0f32, 1.0], &Device::Cpu).unwrap();
        let adam = Optimizer::new(Rule::Adam { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8 }, vec![p.clone()]);
        let w = Tensor::new(&[3.0f32, -0.5], &Device::Cpu).unwrap();
        let loss = (p.as_tensor() * &w).unwrap().sum_all().unwrap();
        adam.step(&loss.backward().unwrap()).unwrap();
        let v = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.9).abs() < 1e-5 && (v[1] - 1.1).abs() < 1e-5, "{v:?}");
    }
}
