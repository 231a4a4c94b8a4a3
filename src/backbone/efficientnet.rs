//! EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for
//! Convolutional Neural Networks", 2019; the Lite variants of the TensorFlow TPU
//! repository: no squeeze-excitation, ReLU6, stem and head not scaled).
//!
//! Weights: the TF checkpoints as converted to PyTorch by the
//! `efficientnet_lite_pytorch` package, tensor names as in its state dict
//! (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...). Convolutions use TF
//! "SAME" padding and batch norm uses eps = 1e-3, as the TF originals did.
//! Batch norm is folded into the convolutions when the model is loaded, and
//! the forward pass runs on NHWC activations with the kernels in
//! [`super::kernels`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::amx::BfMatrix;
use super::int8::QuantMatrix;
use super::kernels::{self, BlockInput, MbConvShape, MbConvWeights};
use super::packed::PackedMatrix;
use crate::{Error, Result};

const BN_EPS: f64 = 1e-3;
/// (repeats, kernel, stride, expand ratio, input filters, output filters) of B0/Lite0.
const BASE_STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Which EfficientNet-Lite, with its scaling coefficients and input size.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub kind: Backbone,
    pub name: &'static str,
    pub width: f64,
    pub depth: f64,
    /// Square input size in pixels.
    pub image_size: usize,
    pub num_classes: usize,
}

/// The backbones imgsearch ships (their weights: [`crate::models::backbone_pin`]).
/// A store holds one backbone's embeddings; `--backbone` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    /// EfficientNet-Lite0: 224 px, the fastest.
    #[default]
    Lite0,
    /// EfficientNet-Lite2: 260 px, slower, a little more accurate.
    Lite2,
}

impl Backbone {
    pub const ALL: [Backbone; 2] = [Backbone::Lite0, Backbone::Lite2];

    /// The name stores and models record (`lite0`, `lite2`).
    pub fn name(self) -> &'static str {
        match self {
            Backbone::Lite0 => "lite0",
            Backbone::Lite2 => "lite2",
        }
    }

    pub fn config(self) -> Config {
        match self {
            Backbone::Lite0 => Config::lite0(),
            Backbone::Lite2 => Config::lite2(),
        }
    }
}

impl std::fmt::Display for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backbone {
    type Err = crate::Error;

    fn from_str(name: &str) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| crate::Error::Msg(format!("unknown backbone \"{name}\": lite0 or lite2")))
    }
}

impl Config {
    pub fn lite0() -> Self {
        Self { kind: Backbone::Lite0, name: "lite0", width: 1.0, depth: 1.0, image_size: 224, num_classes: 1000 }
    }

    pub fn lite2() -> Self {
        Self { kind: Backbone::Lite2, name: "lite2", width: 1.1, depth: 1.2, image_size: 260, num_classes: 1000 }
    }

    /// Dimension of the pooled embedding (the head is not scaled in Lite).
    pub fn embedding_dim(&self) -> usize {
        1280
    }

    fn round_filters(&self, filters: usize) -> usize {
        let divisor = 8.0;
        let f = filters as f64 * self.width;
        let mut new = ((f + divisor / 2.0) / divisor).floor() * divisor;
        new = new.max(divisor);
        if new < 0.9 * f {
            new += divisor;
        }
        new as usize
    }

    /// Every MBConv block in order.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let last = BASE_STAGES.len() - 1;
        let mut blocks = Vec::new();
        for (i, &(repeats, kernel, stride, expand, c_in, c_out)) in BASE_STAGES.iter().enumerate() {
            // Lite keeps the first and last stage's repeats and the stem width fixed.
            let repeats = if i == 0 || i == last { repeats } else { (repeats as f64 * self.depth).ceil() as usize };
            let c_in = if i == 0 { 32 } else { self.round_filters(c_in) };
            let c_out = self.round_filters(c_out);
            for r in 0..repeats {
                blocks.push(BlockSpec {
                    kernel,
                    stride: if r == 0 { stride } else { 1 },
                    expand,
                    c_in: if r == 0 { c_in } else { c_out },
                    c_out,
                });
            }
        }
        blocks
    }
}

/// One MBConv block's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSpec {
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub c_in: usize,
    pub c_out: usize,
}

impl BlockSpec {
    fn c_mid(&self) -> usize {
        self.c_in * self.expand
    }
}

/// A 1x1 convolution with batch norm folded in: weights `[c_in, c_out]`,
/// and their int8 copy or bf16 tiles when those paths run.
struct Pointwise {
    w_t: Vec<f32>,
    bias: Vec<f32>,
    q: Option<QuantMatrix>,
    b: Option<BfMatrix>,
    /// Packed for the AVX-512 f32 kernels, where neither of those runs.
    f: Option<PackedMatrix>,
}

/// The arithmetic of the network's 1x1 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// f32 everywhere: the exact path the NumPy reference pins.
    #[default]
    F32,
    /// bf16 where the CPU has AMX tiles, else f32: the command line's
    /// default. On the 1000 Pascal photos bf16's top-5 classes overlap
    /// f32's at 0.996 and image->image P@10 is f32's (0.550 against 0.5495), at 1.5x its
    /// speed (`IMGSEARCH_BENCH_PHASE=agreement cargo bench --bench embed`).
    Auto,
    /// int8 weights (per output channel) and activations (per pixel) with
    /// AVX-512 VNNI where the CPU has it, else f32: ~1.6x the f32 forward,
    /// image->image P@10 within 0.0003, but the top-5 classes agree on only
    /// 95 % of images (`IMGSEARCH_BENCH_PHASE=agreement cargo bench --bench
    /// embed`), so not the default.
    Int8,
    /// bf16 activations and two-term bf16 weights on AMX tiles where the
    /// CPU has them (Sapphire Rapids and later), but for the first block's
    /// projection; f32 there, and everywhere else.
    Bf16,
}

impl Precision {
    /// `IMGSEARCH_PRECISION` (`f32`, `auto`, `int8` or `bf16`), else f32:
    /// for the benches (the CLI reads the variable through `--precision`).
    pub fn from_env() -> Self {
        match std::env::var("IMGSEARCH_PRECISION").as_deref() {
            Ok("int8") => Precision::Int8,
            Ok("bf16") => Precision::Bf16,
            Ok("auto") => Precision::Auto,
            _ => Precision::F32,
        }
    }
}

struct Block {
    spec: BlockSpec,
    expand: Option<Pointwise>,
    /// `[k, k, c]`, batch norm folded.
    depthwise_w: Vec<f32>,
    depthwise_b: Vec<f32>,
    project: Pointwise,
}

/// What the network returns for a batch of images.
#[derive(Debug)]
pub struct Features {
    /// `(n, 1280)`: the pooled output of the head minus its expected value
    /// ([`super::centre`]): the embedding.
    pub embeddings: Tensor,
    /// `(n, 1000)`: ImageNet logits.
    pub logits: Tensor,
}

/// EfficientNet-Lite, ready to run.
pub struct EfficientNet {
    config: Config,
    /// `[3, 3, 3, 32]`, batch norm folded.
    stem_w: Vec<f32>,
    stem_b: Vec<f32>,
    blocks: Vec<Block>,
    head: Pointwise,
    /// `(1000, 1280)`: the classifier's weights, one row per ImageNet class.
    fc_w: Tensor,
    fc_b: Tensor,
    max_activation: usize,
    workspace: std::sync::Mutex<Workspace>,
    precision: Precision,
}

/// The tensors of a checkpoint, looked up by name with their shape checked.
struct Weights<'a> {
    tensors: HashMap<String, Tensor>,
    path: &'a Path,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::Checkpoint {
            path: self.path.to_path_buf(),
            reason: format!("tensor {name} missing (is this the right --backbone?)"),
        })?;
        if t.dims() != shape {
            return Err(Error::Checkpoint {
                path: self.path.to_path_buf(),
                reason: format!(
                    "tensor {name} has shape {:?}, expected {shape:?} (is this the right --backbone?)",
                    t.dims()
                ),
            });
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    /// A convolution weight `(c_out, c_in/groups, k, k)` and its batch norm,
    /// folded: returns the scaled weight (same layout) and the bias.
    fn conv_bn(&self, conv: &str, bn: &str, shape: &[usize]) -> Result<(Tensor, Vec<f32>)> {
        let w = self.get(&format!("{conv}.weight"), shape)?;
        let c = shape[0];
        let gamma = self.get(&format!("{bn}.weight"), &[c])?;
        let beta = self.get(&format!("{bn}.bias"), &[c])?;
        let mean = self.get(&format!("{bn}.running_mean"), &[c])?;
        let var = self.get(&format!("{bn}.running_var"), &[c])?;
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let bias = (beta - (mean * &scale)?)?;
        let w = w.broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?;
        Ok((w, bias.to_vec1()?))
    }

    fn pointwise(&self, conv: &str, bn: &str, c_in: usize, c_out: usize) -> Result<Pointwise> {
        let (w, bias) = self.conv_bn(conv, bn, &[c_out, c_in, 1, 1])?;
        let w_t = w.reshape((c_out, c_in))?.t()?.contiguous()?.flatten_all()?.to_vec1()?;
        let mut p = Pointwise { w_t, bias, q: None, b: None, f: None };
        p.set_precision(Precision::F32, c_in, false);
        Ok(p)
    }
}

impl Pointwise {
    /// Makes (or drops) the int8 copy and the bf16 tiles for `precision`,
    /// where this CPU runs them, and the packed f32 weights where neither
    /// runs; `k` is the input width.
    fn set_precision(&mut self, precision: Precision, k: usize, tiles: bool) {
        let n = self.bias.len();
        self.q = (precision == Precision::Int8 && QuantMatrix::supported(k)).then(|| QuantMatrix::new(&self.w_t, k, n));
        self.b =
            (precision == Precision::Bf16 && super::amx::available() && tiles).then(|| BfMatrix::new(&self.w_t, k, n));
        self.f = (self.q.is_none() && self.b.is_none() && super::packed::available())
            .then(|| PackedMatrix::new(&self.w_t, k, n));
    }
}

impl EfficientNet {
    /// Loads a model from a safetensors file written by `imgsearch models fetch`
    /// (or any file with the checkpoint's tensor names).
    pub fn load(path: &Path, config: Config) -> Result<Self> {
        if !path.exists() {
            return Err(Error::ModelMissing { path: path.to_path_buf() });
        }
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })?;
        Self::from_tensors(tensors, path, config)
    }

    /// Builds the model from named tensors (PyTorch layout), folding batch norm.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, path: &Path, config: Config) -> Result<Self> {
        let w = Weights { tensors, path };
        let (stem, stem_b) = w.conv_bn("_conv_stem", "_bn0", &[32, 3, 3, 3])?;
        // (c_out, c_in, ky, kx) -> (ky, kx, c_in, c_out)
        let stem_w = stem.permute((2, 3, 1, 0))?.contiguous()?.flatten_all()?.to_vec1()?;
        let mut blocks = Vec::new();
        for (i, spec) in config.blocks().into_iter().enumerate() {
            let p = format!("_blocks.{i}");
            let c_mid = spec.c_mid();
            let expand = if spec.expand != 1 {
                Some(w.pointwise(&format!("{p}._expand_conv"), &format!("{p}._bn0"), spec.c_in, c_mid)?)
            } else {
                None
            };
            let (dw, depthwise_b) = w.conv_bn(
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                &[c_mid, 1, spec.kernel, spec.kernel],
            )?;
            // (c, 1, ky, kx) -> (ky, kx, c)
            let depthwise_w = dw.squeeze(1)?.permute((1, 2, 0))?.contiguous()?.flatten_all()?.to_vec1()?;
            let project = w.pointwise(&format!("{p}._project_conv"), &format!("{p}._bn2"), c_mid, spec.c_out)?;
            blocks.push(Block { spec, expand, depthwise_w, depthwise_b, project });
        }
        let n_blocks = blocks.len();
        if w.tensors.contains_key(&format!("_blocks.{n_blocks}._project_conv.weight")) {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "has more than {n_blocks} blocks: not EfficientNet-{} (is this the right --backbone?)",
                    config.name
                ),
            });
        }
        let last = blocks.last().map(|b| b.spec.c_out).unwrap_or(32);
        let head = w.pointwise("_conv_head", "_bn1", last, 1280)?;
        let fc_w = w.get("_fc.weight", &[config.num_classes, 1280])?.contiguous()?;
        let fc_b = w.get("_fc.bias", &[config.num_classes])?;
        let max_activation = max_activation(&config);
        Ok(Self {
            config,
            stem_w,
            stem_b,
            blocks,
            head,
            fc_w,
            fc_b,
            max_activation,
            workspace: Default::default(),
            precision: Precision::F32,
        })
    }

    /// Switches the blocks' 1x1 products between f32, int8 and bf16 (where
    /// the CPU runs them); `Auto` picks bf16 where it runs, else f32.
    pub fn set_precision(&mut self, precision: Precision) {
        let precision = match precision {
            Precision::Auto if super::amx::available() => Precision::Bf16,
            Precision::Auto => Precision::F32,
            p => p,
        };
        self.precision = precision;
        for block in &mut self.blocks {
            let s = block.spec;
            if let Some(e) = block.expand.as_mut() {
                e.set_precision(precision, s.c_in, true);
            }
            // The projections over 32 inputs or fewer (the first block's, on
            // the 112 x 112 map) stay f32. Rounding its inputs to bf16 took a
            // flat synthetic picture's embedding to a cosine of 0.995 with
            // f32; splitting them into two bf16 terms made it 0.41 against
            // 0.23 ms an image in f32 (`IMGSEARCH_PROFILE`). The expansions
            // over 16 and 24 inputs run on tiles: 4 % faster than in f32
            // (`cargo bench --bench embed`), and harmless to the embedding.
            block.project.set_precision(precision, s.c_mid(), s.c_mid() > 32);
        }
        let c = self.head.w_t.len() / self.head.bias.len();
        self.head.set_precision(precision, c, true);
    }

    /// The arithmetic the 1x1 products run in: the precision asked for
    /// where this CPU has its instructions, else f32.
    pub fn runs(&self) -> Precision {
        let products = || self.blocks.iter().map(|b| &b.project).chain([&self.head]);
        if products().any(|p| p.q.is_some()) {
            Precision::Int8
        } else if products().any(|p| p.b.is_some()) {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The classifier's weights, `(1000, 1280)`: row `i` reweights an embedding
    /// towards ImageNet class `i` (class-weighted search).
    pub fn class_weights(&self) -> &Tensor {
        &self.fc_w
    }

    /// Runs the network on `(n, size, size, 3)` normalised NHWC images.
    pub fn forward(&self, images: &Tensor) -> Result<Features> {
        let (n, h, w, c) = images.dims4()?;
        let size = self.config.image_size;
        if (h, w, c) != (size, size, 3) {
            return Err(Error::Msg(format!(
                "EfficientNet-{} expects (n, {size}, {size}, 3) images, got {:?}",
                self.config.name,
                images.dims()
            )));
        }
        let input = images.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let images: Vec<&[f32]> = input.chunks_exact(size * size * 3).collect();
        let (embeddings, logits) = self.forward_images(&images)?;
        let embeddings = Tensor::from_vec(embeddings, (n, 1280), &Device::Cpu)?;
        Ok(Features { embeddings, logits })
    }

    /// [`Self::forward`] on HWC images as the embedder holds them, each
    /// its own slice (a tensor cost a copy of the batch each way, and
    /// joining the images one): the embeddings, `n x 1280` row-major, and
    /// the logits.
    pub fn forward_images(&self, images: &[&[f32]]) -> Result<(Vec<f32>, Tensor)> {
        let size = self.config.image_size;
        if let Some(bad) = images.iter().find(|x| x.len() != size * size * 3) {
            return Err(Error::Msg(format!(
                "EfficientNet-{} expects images of {size} x {size} x 3 floats, got one of {} floats",
                self.config.name,
                bad.len()
            )));
        }
        let n = images.len();
        let mut pooled = self.forward_slice(images)?;
        let logits =
            Tensor::from_slice(&pooled, (n, 1280), &Device::Cpu)?.matmul(&self.fc_w.t()?)?.broadcast_add(&self.fc_b)?;
        for e in pooled.chunks_exact_mut(1280) {
            super::centre_in_place(self.config.kind, e);
        }
        Ok((pooled, logits))
    }

    /// The convolutional trunk on a batch of raw HWC images; returns `n x 1280` pooled features.
    ///
    /// Each MBConv block runs fused (see [`kernels::mbconv`]): only the
    /// narrow block inputs and outputs live in memory, in buffers kept between
    /// calls so that a batch touches no fresh pages.
    fn forward_slice(&self, images: &[&[f32]]) -> Result<Vec<f32>> {
        let n = images.len();
        let mut fresh = Workspace::default();
        let mut guard = self.workspace.try_lock();
        let ws = match guard.as_deref_mut() {
            Ok(ws) => ws,
            Err(_) => &mut fresh, // another thread is running a batch: use our own
        };
        let need = n * self.max_activation;
        for buf in [&mut ws.x, &mut ws.mid, &mut ws.dw] {
            if buf.len() < need {
                *buf = vec![0f32; need];
            }
        }
        let Workspace { x: xb, mid: mb, dw: db } = ws;
        let (mut x, mut next, dw) = (xb, mb, db);
        let size = self.config.image_size;
        let mut prof = Profile::from_env();
        let stem = kernels::Stem { images, height: size, width: size, w: &self.stem_w, bias: &self.stem_b };
        let (mut h, mut w) = stem.out_size();
        // The first block takes the stem's rows as it goes when it can (see
        // `kernels::BlockInput::Stem`); else the stem runs on its own.
        let first = &self.blocks[0].spec;
        let fused = self.blocks[0].expand.is_none() && !(first.stride == 1 && first.c_in == first.c_out);
        if !fused {
            stem.run(x);
            prof.lap("stem");
        }
        let mut c = 32;
        for (i, block) in self.blocks.iter().enumerate() {
            let s = block.spec;
            let shape = MbConvShape {
                batch: n,
                height: h,
                width: w,
                c_in: s.c_in,
                c_mid: s.c_mid(),
                c_out: s.c_out,
                kernel: s.kernel,
                stride: s.stride,
            };
            let weights = MbConvWeights {
                expand: block.expand.as_ref().map(|e| (&e.w_t[..], &e.bias[..])),
                depthwise: (&block.depthwise_w, &block.depthwise_b),
                project: (&block.project.w_t, &block.project.bias),
                expand_q: block.expand.as_ref().and_then(|e| e.q.as_ref()),
                project_q: block.project.q.as_ref(),
                expand_b: block.expand.as_ref().and_then(|e| e.b.as_ref()),
                project_b: block.project.b.as_ref(),
                expand_f: block.expand.as_ref().and_then(|e| e.f.as_ref()),
                project_f: block.project.f.as_ref(),
            };
            let input = match i == 0 && fused {
                true => BlockInput::Stem(stem),
                false => BlockInput::Map(&x[..n * h * w * s.c_in]),
            };
            (h, w) = kernels::mbconv(input, shape, &weights, next);
            prof.lap(match (i == 0 && fused, s.kernel) {
                (true, _) => "stem + MBConv 1",
                (_, 3) => "MBConv k3",
                _ => "MBConv k5",
            });
            std::mem::swap(&mut x, &mut next);
            c = s.c_out;
        }
        let head_len = n * h * w * 1280;
        match (&self.head.q, &self.head.b, &self.head.f) {
            (Some(q), _, _) => {
                q.matmul_parallel(&x[..n * h * w * c], &mut dw[..head_len], super::int8::Epilogue::Store)
            }
            (None, Some(b), _) => b.matmul_parallel(&x[..n * h * w * c], &mut dw[..head_len]),
            (None, None, Some(f)) => f.matmul_parallel(&x[..n * h * w * c], &mut dw[..head_len]),
            (None, None, None) => {
                kernels::pointwise(&x[..n * h * w * c], c, &self.head.w_t, None, None, &mut dw[..head_len])
            }
        }
        prof.lap("head 1x1");
        let pooled = kernels::relu6_mean_pool(&dw[..head_len], n, &self.head.bias);
        prof.lap("pool");
        prof.report(n);
        Ok(pooled)
    }
}

/// Per-stage wall time of a forward pass, printed to stderr when
/// `IMGSEARCH_PROFILE` is set (the profile behind the performance notes).
struct Profile {
    start: Option<std::time::Instant>,
    stages: Vec<(&'static str, f64)>,
}

impl Profile {
    fn from_env() -> Self {
        let on = std::env::var_os("IMGSEARCH_PROFILE").is_some();
        Self { start: on.then(std::time::Instant::now), stages: Vec::new() }
    }

    fn lap(&mut self, stage: &'static str) {
        if let Some(start) = self.start {
            let now = std::time::Instant::now();
            let ms = (now - start).as_secs_f64() * 1e3;
            match self.stages.iter_mut().find(|(s, _)| *s == stage) {
                Some((_, t)) => *t += ms,
                None => self.stages.push((stage, ms)),
            }
            self.start = Some(now);
        }
    }

    fn report(&self, n: usize) {
        if self.start.is_some() {
            let total: f64 = self.stages.iter().map(|(_, t)| t).sum();
            let parts: Vec<String> = self
                .stages
                .iter()
                .map(|(s, t)| format!("{s} {:.2} ms ({:.0}%)", t / n as f64, 100.0 * t / total))
                .collect();
            eprintln!("forward per image: {:.2} ms = {}", total / n as f64, parts.join(", "));
        }
    }
}

/// Activation buffers reused across layers and batches.
#[derive(Default)]
struct Workspace {
    x: Vec<f32>,
    mid: Vec<f32>,
    dw: Vec<f32>,
}

/// The largest activation of one image that the fused forward pass keeps in
/// memory (stem output, block inputs and outputs, the head), in floats.
fn max_activation(config: &Config) -> usize {
    let mut h = config.image_size.div_ceil(2);
    let mut most = h * h * 32;
    for s in config.blocks() {
        h = h.div_ceil(s.stride);
        most = most.max(h * h * s.c_out);
    }
    most.max(h * h * 1280)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite0_has_16_blocks_with_known_widths() {
        let blocks = Config::lite0().blocks();
        assert_eq!(blocks.len(), 16);
        assert_eq!(blocks[0], BlockSpec { kernel: 3, stride: 1, expand: 1, c_in: 32, c_out: 16 });
        assert_eq!(blocks[15].c_out, 320);
    }

    #[test]
    fn lite2_scales_depth_and_width_but_not_stem_or_last_stage() {
        let blocks = Config::lite2().blocks();
        assert_eq!(blocks.len(), 1 + 3 + 3 + 4 + 4 + 5 + 1);
        assert_eq!(blocks[0].c_in, 32);
        assert_eq!(blocks[0].c_out, 16);
        assert_eq!(blocks.last().unwrap().c_out, 352);
        assert_eq!(blocks[4].c_out, 48);
    }
}
