//! CPU kernels for the EfficientNet forward pass, on NHWC activations.
//!
//! Why our own: candle's grouped convolution runs a depthwise layer one
//! channel at a time (~0.4 GFLOP/s measured on the 2-core dev machine, see
//! `shared/notes/performance.md`), which would make Lite0 run at a few img/s.
//! In NHWC the channels of one pixel are contiguous, so a depthwise kernel
//! vectorises across channels, and a 1x1 convolution is one matrix product
//! `[pixels, c_in] x [c_in, c_out]` for the `gemm` crate (the one candle's
//! CPU matmul uses). Bias, ReLU6 and the residual are fused into these passes
//! so that no layer makes an extra trip through memory:
//! - a 1x1 convolution starts its output from `bias (+ residual)` and lets
//!   gemm accumulate into it;
//! - ReLU6 of an expansion is applied by the depthwise kernel as it reads;
//! - ReLU6 of the head is applied by the pooling.

use rayon::prelude::*;

use super::amx::{self, Bf16, BfMatrix, Rows};
use super::int8::{Epilogue, QuantMatrix, Scratch};
use super::packed::PackedMatrix;
use crate::simd::simd;

/// TF "SAME" padding: the output size and the padding before the first pixel.
/// The total padding is split with the extra pixel (if any) after the input.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let output = input.div_ceil(stride);
    let total = ((output - 1) * stride + kernel).saturating_sub(input);
    (output, total / 2)
}

#[inline(always)]
fn relu6(x: f32) -> f32 {
    x.clamp(0.0, 6.0)
}

/// A 1x1 convolution is one matrix product over pixels: the dense layer
/// the text encoder uses too.
pub use crate::dense::dense as pointwise;

/// Shape of a depthwise convolution over NHWC activations.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseShape {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_height: usize,
    pub out_width: usize,
}

impl DepthwiseShape {
    /// A depthwise layer with TF "SAME" padding.
    pub fn same(batch: usize, height: usize, width: usize, channels: usize, kernel: usize, stride: usize) -> Self {
        let (out_height, pad_top) = same_padding(height, kernel, stride);
        let (out_width, pad_left) = same_padding(width, kernel, stride);
        Self { batch, height, width, channels, kernel, stride, pad_top, pad_left, out_height, out_width }
    }
}

/// Depthwise convolution + bias + ReLU6 over NHWC activations.
///
/// `w` is `[kernel, kernel, channels]`. With `input_bias`, every input value
/// `v` is read as `relu6(v + input_bias[c])`: the bias and activation of the
/// 1x1 expansion before it, fused here. Padding is zero either way.
pub fn depthwise(
    x: &[f32],
    shape: DepthwiseShape,
    w: &[f32],
    bias: &[f32],
    input_bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let s = shape;
    let c = s.channels;
    assert_eq!(x.len(), s.batch * s.height * s.width * c, "depthwise: input shape");
    assert_eq!(w.len(), s.kernel * s.kernel * c, "depthwise: weight shape");
    assert_eq!(bias.len(), c, "depthwise: bias shape");
    assert_eq!(out.len(), s.batch * s.out_height * s.out_width * c, "depthwise: output shape");
    let row_len = s.out_width * c;
    // A task computes a band of output rows of one image, so that the input
    // rows the band shares are staged once.
    const BAND: usize = 8;
    out.par_chunks_mut(s.out_height * row_len).enumerate().for_each(|(n, image_out)| {
        let image = &x[n * s.height * s.width * c..(n + 1) * s.height * s.width * c];
        image_out.par_chunks_mut(BAND * row_len).enumerate().for_each_init(Vec::new, |scratch, (band, band_out)| {
            depthwise_band(image, s, w, bias, input_bias, band * BAND, band_out, scratch);
        });
    });
}

/// Width of the zero-padded input rows one output row reads.
fn padded_width(s: &DepthwiseShape) -> usize {
    (s.out_width - 1) * s.stride + s.kernel
}

/// Copies the input rows under output rows `oy0..oy0 + n_out` into `scratch`,
/// as `[rows, padded_width, c]` with the padding as zeros and, with
/// `input_bias`, `relu6(v + bias)` applied once per value.
#[inline(always)]
fn stage_rows(
    image: &[f32],
    s: &DepthwiseShape,
    input_bias: Option<&[f32]>,
    oy0: usize,
    n_out: usize,
    scratch: &mut Vec<f32>,
) {
    let c = s.channels;
    let pw = padded_width(s);
    let rows = (n_out - 1) * s.stride + s.kernel;
    scratch.resize(rows * pw * c, 0.0);
    let cols = s.width.min(pw - s.pad_left);
    for r in 0..rows {
        let slot = &mut scratch[r * pw * c..(r + 1) * pw * c];
        let iy = (oy0 * s.stride + r) as isize - s.pad_top as isize;
        if iy < 0 || iy >= s.height as isize {
            slot.fill(0.0);
            continue;
        }
        // Only the padding columns need zeros; the rest is overwritten below.
        slot[..s.pad_left * c].fill(0.0);
        slot[(s.pad_left + cols) * c..].fill(0.0);
        let src = &image[iy as usize * s.width * c..(iy as usize + 1) * s.width * c];
        let dst = &mut scratch[(r * pw + s.pad_left) * c..(r * pw + s.pad_left + cols) * c];
        match input_bias {
            Some(b) => {
                for (d_px, s_px) in dst.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
                    for ((d, &v), &b) in d_px.iter_mut().zip(s_px).zip(b) {
                        *d = relu6(v + b);
                    }
                }
            }
            None => dst.copy_from_slice(&src[..cols * c]),
        }
    }
}

/// A band of output rows of [`depthwise`], compiled for the widest SIMD the CPU has.
#[allow(clippy::too_many_arguments)]
fn depthwise_band(
    image: &[f32],
    s: DepthwiseShape,
    w: &[f32],
    bias: &[f32],
    input_bias: Option<&[f32]>,
    oy0: usize,
    band_out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    simd(
        #[inline(always)]
        || depthwise_band_generic(image, s, w, bias, input_bias, oy0, band_out, scratch),
    )
}

/// Channels handled together: one AVX-512 register of f32.
const LANES: usize = 16;

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn depthwise_band_generic(
    image: &[f32],
    s: DepthwiseShape,
    w: &[f32],
    bias: &[f32],
    input_bias: Option<&[f32]>,
    oy0: usize,
    band_out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let row_len = s.out_width * s.channels;
    let n_out = band_out.len() / row_len;
    stage_rows(image, &s, input_bias, oy0, n_out, scratch);
    let pw = padded_width(&s);
    for (i, out_row) in band_out.chunks_exact_mut(row_len).enumerate() {
        let rows = &scratch[i * s.stride * pw * s.channels..];
        depthwise_row_staged(rows, &s, w, bias, out_row);
    }
}

/// One output row from its staged input rows (`rows` starts at its first row).
#[inline(always)]
fn depthwise_row_staged<O: Activation>(
    scratch: &[f32],
    s: &DepthwiseShape,
    w: &[f32],
    bias: &[f32],
    out_row: &mut [O],
) {
    let s = *s;
    let c = s.channels;
    let vector_c = c / LANES * LANES;
    #[cfg(target_arch = "x86_64")]
    let done = match s.kernel {
        3 => outputs_in_registers_for::<3, O>(scratch, &s, w, bias, vector_c, out_row),
        5 => outputs_in_registers_for::<5, O>(scratch, &s, w, bias, vector_c, out_row),
        _ => false,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    if !done {
        match s.kernel {
            3 => taps_in_registers::<3, O>(scratch, &s, w, bias, vector_c, out_row),
            5 => taps_in_registers::<5, O>(scratch, &s, w, bias, vector_c, out_row),
            _ => {}
        }
    }
    // Whatever the vector path did not cover: other kernel sizes, leftover channels.
    let first_c = if matches!(s.kernel, 3 | 5) { vector_c } else { 0 };
    let pw = padded_width(&s);
    for ox in 0..s.out_width {
        for ch in first_c..c {
            let mut acc = bias[ch];
            for ky in 0..s.kernel {
                for kx in 0..s.kernel {
                    acc += scratch[(ky * pw + ox * s.stride + kx) * c + ch] * w[(ky * s.kernel + kx) * c + ch];
                }
            }
            out_row[ox * c + ch] = O::relu6(acc);
        }
    }
}

/// How a depthwise output is stored after its ReLU6: f32, the u8 the int8
/// product reads (`0..=6` in 255 steps, the fixed range of ReLU6:
/// `imgsearch eval` measured no loss against a per-pixel range), or the
/// bf16 the AMX product reads.
pub trait Activation: Copy {
    fn relu6(x: f32) -> Self;

    /// 16 values already clamped to `0..=6`, converted and stored at `dst`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW, and `dst` has room for [`LANES`] values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store_clamped(v: std::arch::x86_64::__m512, dst: *mut Self);

    /// ReLU6 of an AVX-512 register, stored at `dst`.
    ///
    /// # Safety
    /// As [`Activation::store_clamped`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store_relu6(acc: std::arch::x86_64::__m512, dst: *mut Self) {
        use std::arch::x86_64::*;
        Self::store_clamped(_mm512_min_ps(_mm512_max_ps(acc, _mm512_setzero_ps()), _mm512_set1_ps(6.0)), dst)
    }

    /// [`LANES`] values at once (the depthwise kernel's register).
    #[inline(always)]
    fn relu6_lanes(acc: &[f32; LANES], dst: &mut [Self; LANES]) {
        #[cfg(target_arch = "x86_64")]
        if LANES == 16 && is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX-512BW; 16 floats are read and 16 values written.
            unsafe { Self::store_relu6(std::arch::x86_64::_mm512_loadu_ps(acc.as_ptr()), dst.as_mut_ptr()) };
            return;
        }
        for i in 0..LANES {
            dst[i] = Self::relu6(acc[i]);
        }
    }
}

impl Activation for f32 {
    #[inline(always)]
    fn relu6(x: f32) -> f32 {
        relu6(x)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store_clamped(v: std::arch::x86_64::__m512, dst: *mut f32) {
        std::arch::x86_64::_mm512_storeu_ps(dst, v)
    }
}

impl Activation for u8 {
    #[inline(always)]
    fn relu6(x: f32) -> u8 {
        (relu6(x) * (255.0 / 6.0) + 0.5) as u8
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store_clamped(v: std::arch::x86_64::__m512, dst: *mut u8) {
        use std::arch::x86_64::*;
        let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(255.0 / 6.0)));
        _mm512_mask_cvtusepi32_storeu_epi8(dst as *mut _, 0xFFFF, q);
    }
}

impl Activation for Bf16 {
    #[inline(always)]
    fn relu6(x: f32) -> Bf16 {
        Bf16(amx::bf16(relu6(x)))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store_clamped(v: std::arch::x86_64::__m512, dst: *mut Bf16) {
        use std::arch::x86_64::*;
        _mm256_storeu_si256(dst as *mut __m256i, amx::bf16_lanes(v));
    }
}

/// [`outputs_in_registers`] with the outputs at a time and the stride of
/// this row, where the CPU has AVX-512BW and the row is four outputs wide
/// or more; `false` where it did nothing.
#[cfg(target_arch = "x86_64")]
fn outputs_in_registers_for<const K: usize, O: Activation>(
    scratch: &[f32],
    s: &DepthwiseShape,
    w: &[f32],
    bias: &[f32],
    vector_c: usize,
    out_row: &mut [O],
) -> bool {
    if !is_x86_feature_detected!("avx512bw") || s.out_width < 4 {
        return false;
    }
    // Eight at a time where the row allows, but for 5x5 stride 2: eight
    // would hold 19 inputs, 8 sums and 5 weights, every register, and spill
    // (1-4 % slower forward passes).
    let eight = s.out_width >= 8 && !(K == 5 && s.stride == 2);
    // SAFETY: the CPU has AVX-512F and BW; the slices are checked inside.
    unsafe {
        match (s.stride, eight) {
            (1, true) => outputs_in_registers::<K, 8, 1, O>(scratch, s, w, bias, vector_c, out_row),
            (1, false) => outputs_in_registers::<K, 4, 1, O>(scratch, s, w, bias, vector_c, out_row),
            (2, true) => outputs_in_registers::<K, 8, 2, O>(scratch, s, w, bias, vector_c, out_row),
            (2, false) => outputs_in_registers::<K, 4, 2, O>(scratch, s, w, bias, vector_c, out_row),
            _ => return false,
        }
    }
    true
}

/// The depthwise row with AVX-512 FMAs, eight output pixels at a time:
/// each of their sums is a chain of `K * K` dependent FMAs, so one pixel
/// at a time waits on the FMA's latency. Timed on one band alone (session
/// 11, cycles at 3 GHz per 16 outputs of a 5x5 kernel): 63-87 for
/// [`taps_in_registers`], 55 for one pixel at a time here, 38-52 for
/// eight; the whole forward pass went 300 -> 355 img/s. One kernel row's
/// weights sit in registers while the eight sums take their taps; a row whose
/// width is not a multiple of eight ends with a group shifted back over
/// pixels already written (the same values again). The inputs under the
/// eight are loaded once a kernel row and shared by the outputs whose
/// windows overlap (session 13: a load per tap before; f32 forward
/// 237-246 -> 257-260 img/s, bf16 341-353 -> 379-393).
///
/// `N` (8, or 4 for narrower rows and 5x5 stride 2) is a constant, so that the sums stay in
/// registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn outputs_in_registers<const K: usize, const N: usize, const S: usize, O: Activation>(
    scratch: &[f32],
    s: &DepthwiseShape,
    w: &[f32],
    bias: &[f32],
    vector_c: usize,
    out_row: &mut [O],
) {
    use std::arch::x86_64::*;
    const MAX_INPUTS: usize = 7 * 2 + 5;
    assert!((N - 1) * S + K <= MAX_INPUTS && s.stride == S, "outputs_in_registers: shape");
    let (c, stride, ow) = (s.channels, s.stride, s.out_width);
    let pw = padded_width(s);
    // Everything read below lies inside these.
    assert!(scratch.len() >= (K - 1) * pw * c + pw * c && w.len() >= K * K * c && bias.len() >= c);
    assert!(out_row.len() >= ow * c && ow >= N && (ow - 1) * stride + K <= pw);
    let (sp, wp, op) = (scratch.as_ptr(), w.as_ptr(), out_row.as_mut_ptr());
    for c0 in (0..vector_c).step_by(LANES) {
        let b = _mm512_loadu_ps(bias.as_ptr().add(c0));
        let mut ox0 = 0;
        while ox0 < ow {
            let start = ox0.min(ow - N);
            let mut acc = [b; N];
            for ky in 0..K {
                let mut wr = [_mm512_setzero_ps(); K];
                for (kx, wv) in wr.iter_mut().enumerate() {
                    *wv = _mm512_loadu_ps(wp.add((ky * K + kx) * c + c0));
                }
                let row = sp.add(ky * pw * c + c0).add(start * S * c);
                // The inputs under the N outputs, each loaded once: the
                // neighbours' windows overlap by K - S pixels.
                let mut xs = [_mm512_setzero_ps(); MAX_INPUTS];
                for (i, x) in xs.iter_mut().enumerate().take((N - 1) * S + K) {
                    *x = _mm512_loadu_ps(row.add(i * c));
                }
                for (o, a) in acc.iter_mut().enumerate() {
                    for (kx, &wv) in wr.iter().enumerate() {
                        *a = _mm512_fmadd_ps(xs[o * S + kx], wv, *a);
                    }
                }
            }
            for (o, a) in acc.iter().enumerate() {
                O::store_relu6(*a, op.add((start + o) * c + c0));
            }
            ox0 = start + N;
        }
    }
}

/// For each block of [`LANES`] channels, the K*K weights stay in registers
/// while the kernel slides along the row; each output is written once.
#[inline(always)]
fn taps_in_registers<const K: usize, O: Activation>(
    scratch: &[f32],
    s: &DepthwiseShape,
    w: &[f32],
    bias: &[f32],
    vector_c: usize,
    out_row: &mut [O],
) {
    let c = s.channels;
    let pw = padded_width(s);
    for c0 in (0..vector_c).step_by(LANES) {
        let mut wr = [[[0f32; LANES]; K]; K];
        for (ky, wrow) in wr.iter_mut().enumerate() {
            for (kx, wv) in wrow.iter_mut().enumerate() {
                wv.copy_from_slice(&w[(ky * K + kx) * c + c0..][..LANES]);
            }
        }
        let b: [f32; LANES] = bias[c0..c0 + LANES].try_into().unwrap();
        for ox in 0..s.out_width {
            let mut acc = b;
            for (ky, wrow) in wr.iter().enumerate() {
                let row = &scratch[(ky * pw + ox * s.stride) * c + c0..];
                for (kx, wv) in wrow.iter().enumerate() {
                    let src: &[f32; LANES] = row[kx * c..kx * c + LANES].try_into().unwrap();
                    for i in 0..LANES {
                        acc[i] += src[i] * wv[i];
                    }
                }
            }
            let dst: &mut [O; LANES] = (&mut out_row[ox * c + c0..ox * c + c0 + LANES]).try_into().unwrap();
            O::relu6_lanes(&acc, dst);
        }
    }
}

/// The stem: a dense 3x3 stride-2 convolution from RGB, + bias + ReLU6, with
/// TF "SAME" padding, over a batch of images. Each of `images` is `[h, w, 3]`,
/// `w` is `[3, 3, 3, 32]`.
#[derive(Clone, Copy)]
pub struct Stem<'a> {
    pub images: &'a [&'a [f32]],
    pub height: usize,
    pub width: usize,
    pub w: &'a [f32],
    pub bias: &'a [f32],
}

impl Stem<'_> {
    const K: usize = 3;
    const STRIDE: usize = 2;
    const C_IN: usize = 3;

    /// `(oh, ow)` of the output.
    pub fn out_size(&self) -> (usize, usize) {
        (same_padding(self.height, Self::K, Self::STRIDE).0, same_padding(self.width, Self::K, Self::STRIDE).0)
    }

    fn check(&self) {
        assert_eq!(self.bias.len(), STEM_CHANNELS, "stem: EfficientNet-Lite's stem has 32 channels");
        assert!(self.images.iter().all(|x| x.len() == self.height * self.width * Self::C_IN), "stem: input shape");
        assert_eq!(self.w.len(), Self::K * Self::K * Self::C_IN * STEM_CHANNELS, "stem: weight shape");
    }

    /// Output row `oy` of image `n`: `ow * 32` floats.
    fn row(&self, n: usize, oy: usize, out_row: &mut [f32]) {
        let Stem { images, height, width, w, bias } = *self;
        let (pad_top, pad_left) = (same_padding(height, 3, 2).1, same_padding(width, 3, 2).1);
        let image = images[n];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the slices are checked inside.
            unsafe { stem_row_avx512(image, height, width, w, bias, pad_top, pad_left, oy, out_row) };
            return;
        }
        let ow = out_row.len() / STEM_CHANNELS;
        simd(
            #[inline(always)]
            || stem_row(image, height, width, w, bias, pad_top, pad_left, oy, out_row, 0..ow),
        )
    }

    /// The whole output, `[n, oh, ow, 32]`, into the front of `out`; returns `(oh, ow)`.
    pub fn run(&self, out: &mut [f32]) -> (usize, usize) {
        self.check();
        let (oh, ow) = self.out_size();
        let out = &mut out[..self.images.len() * oh * ow * STEM_CHANNELS];
        out.par_chunks_mut(ow * STEM_CHANNELS)
            .enumerate()
            .for_each(|(row, out_row)| self.row(row / oh, row % oh, out_row));
        (oh, ow)
    }
}

/// [`stem_row`] eight output pixels at a time, with FMAs: one pixel's
/// 27 taps are a chain of dependent adds, so a pixel at a time waited on
/// their latency (the stem was 0.20 ms of a 4.1 ms f32 forward pass).
/// Pixels whose window leaves the image on the left or right go through
/// [`stem_row`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn stem_row_avx512(
    image: &[f32],
    height: usize,
    width: usize,
    w: &[f32],
    bias: &[f32],
    pad_top: usize,
    pad_left: usize,
    oy: usize,
    out_row: &mut [f32],
) {
    use std::arch::x86_64::*;
    const K: usize = 3;
    const STRIDE: usize = 2;
    const C_IN: usize = 3;
    const C: usize = STEM_CHANNELS;
    const N: usize = 8;
    let ow = out_row.len() / C;
    // The output columns whose whole window lies inside the image.
    let first = pad_left.div_ceil(STRIDE);
    let end = ((width + pad_left).saturating_sub(K) / STRIDE + 1).min(ow);
    if end < first + N {
        return stem_row(image, height, width, w, bias, pad_top, pad_left, oy, out_row, 0..ow);
    }
    stem_row(image, height, width, w, bias, pad_top, pad_left, oy, out_row, 0..first);
    stem_row(image, height, width, w, bias, pad_top, pad_left, oy, out_row, end..ow);
    let taps = as_taps(w);
    assert!(image.len() >= height * width * C_IN && bias.len() == C && out_row.len() == ow * C);
    let (b0, b1) = (_mm512_loadu_ps(bias.as_ptr()), _mm512_loadu_ps(bias.as_ptr().add(16)));
    let (six, zero) = (_mm512_set1_ps(6.0), _mm512_setzero_ps());
    let mut ox0 = first;
    while ox0 < end {
        let start = ox0.min(end - N);
        let mut acc = [(b0, b1); N];
        for ky in 0..K {
            let iy = (oy * STRIDE + ky) as isize - pad_top as isize;
            if iy < 0 || iy >= height as isize {
                continue;
            }
            // Pixel `start` reads from column `start * STRIDE - pad_left` on.
            let row = image.as_ptr().add((iy as usize * width + start * STRIDE - pad_left) * C_IN);
            for kx in 0..K {
                for ci in 0..C_IN {
                    let tap = &taps[(ky * K + kx) * C_IN + ci];
                    let (w0, w1) = (_mm512_loadu_ps(tap.as_ptr()), _mm512_loadu_ps(tap.as_ptr().add(16)));
                    for (o, (a0, a1)) in acc.iter_mut().enumerate() {
                        let v = _mm512_set1_ps(*row.add((o * STRIDE + kx) * C_IN + ci));
                        *a0 = _mm512_fmadd_ps(v, w0, *a0);
                        *a1 = _mm512_fmadd_ps(v, w1, *a1);
                    }
                }
            }
        }
        for (o, (a0, a1)) in acc.iter().enumerate() {
            let dst = out_row.as_mut_ptr().add((start + o) * C);
            _mm512_storeu_ps(dst, _mm512_min_ps(_mm512_max_ps(*a0, zero), six));
            _mm512_storeu_ps(dst.add(16), _mm512_min_ps(_mm512_max_ps(*a1, zero), six));
        }
        ox0 = start + N;
    }
}

/// Output channels of the stem (fixed in every EfficientNet-Lite).
pub const STEM_CHANNELS: usize = 32;

/// The stem weights `[27 * 32]` viewed as 27 taps of 32 channels, without copying.
fn as_taps(w: &[f32]) -> &[[f32; STEM_CHANNELS]] {
    let (taps, rest) = w.as_chunks::<STEM_CHANNELS>();
    assert!(rest.is_empty(), "stem weights are whole taps");
    taps
}

/// Output columns `columns` of one row of the stem. The 32 accumulators of a pixel are a fixed-size
/// array, so they stay in two AVX-512 registers across the 27 taps.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn stem_row(
    image: &[f32],
    height: usize,
    width: usize,
    w: &[f32],
    bias: &[f32],
    pad_top: usize,
    pad_left: usize,
    oy: usize,
    out_row: &mut [f32],
    columns: std::ops::Range<usize>,
) {
    const K: usize = 3;
    const STRIDE: usize = 2;
    const C_IN: usize = 3;
    const C: usize = STEM_CHANNELS;
    let bias: [f32; C] = bias.try_into().expect("stem has 32 output channels");
    let taps: &[[f32; C]] = as_taps(w);
    for (ox, px) in out_row.chunks_exact_mut(C).enumerate().take(columns.end).skip(columns.start) {
        let mut acc = bias;
        for ky in 0..K {
            let iy = (oy * STRIDE + ky) as isize - pad_top as isize;
            if iy < 0 || iy >= height as isize {
                continue;
            }
            for kx in 0..K {
                let ix = (ox * STRIDE + kx) as isize - pad_left as isize;
                if ix < 0 || ix >= width as isize {
                    continue;
                }
                let src = &image[(iy as usize * width + ix as usize) * C_IN..][..C_IN];
                for (ci, &v) in src.iter().enumerate() {
                    let wk = &taps[(ky * K + kx) * C_IN + ci];
                    for o in 0..C {
                        acc[o] += v * wk[o];
                    }
                }
            }
        }
        for (d, a) in px.iter_mut().zip(acc) {
            *d = relu6(a);
        }
    }
}

/// The weights of one inverted-residual (MBConv) block, batch norm folded.
pub struct MbConvWeights<'a> {
    /// 1x1 expansion `[c_in, c_mid]` and its bias; `None` when the block does not expand.
    pub expand: Option<(&'a [f32], &'a [f32])>,
    /// Depthwise `[k, k, c_mid]` and its bias.
    pub depthwise: (&'a [f32], &'a [f32]),
    /// 1x1 projection `[c_mid, c_out]` and its bias.
    pub project: (&'a [f32], &'a [f32]),
    /// The int8 copies of the 1x1 weights, when the int8 path runs.
    pub expand_q: Option<&'a QuantMatrix>,
    pub project_q: Option<&'a QuantMatrix>,
    /// Their bf16 tiles, when the AMX path runs.
    pub expand_b: Option<&'a BfMatrix>,
    pub project_b: Option<&'a BfMatrix>,
    /// Packed for the AVX-512 f32 kernels, where those run.
    pub expand_f: Option<&'a PackedMatrix>,
    pub project_f: Option<&'a PackedMatrix>,
}

/// Where an MBConv block's input rows come from.
#[derive(Clone, Copy)]
pub enum BlockInput<'a> {
    /// A map in memory, `[n, h, w, c_in]`.
    Map(&'a [f32]),
    /// The stem, row by row as the block needs them (the first block, which
    /// neither expands nor adds its input back).
    Stem(Stem<'a>),
}

/// Shape of one MBConv block.
#[derive(Debug, Clone, Copy)]
pub struct MbConvShape {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub c_in: usize,
    pub c_mid: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
}

/// One whole MBConv block (expand 1x1 + ReLU6, depthwise + ReLU6, project 1x1,
/// residual when the shape allows), fused per band of output rows.
///
/// The expanded activations are `expand` times wider than the block's input
/// and output; computing them band by band into a buffer that stays in cache
/// means they never travel to memory. A band recomputes the `kernel - stride`
/// input rows it shares with its neighbour; small maps are one band.
/// Writes `[n, oh, ow, c_out]` into the front of `out`; returns `(oh, ow)`.
pub fn mbconv(input: BlockInput, shape: MbConvShape, weights: &MbConvWeights, out: &mut [f32]) -> (usize, usize) {
    let MbConvShape { batch, height, width, c_in, c_mid, c_out, kernel, stride } = shape;
    let dw = DepthwiseShape::same(batch, height, width, c_mid, kernel, stride);
    let (oh, ow) = (dw.out_height, dw.out_width);
    assert!(weights.expand.is_some() || c_in == c_mid, "mbconv: no expansion needs c_in == c_mid");
    let residual = stride == 1 && c_in == c_out;
    let (x, stem) = match input {
        BlockInput::Map(x) => {
            assert_eq!(x.len(), batch * height * width * c_in, "mbconv: input shape");
            (x, None)
        }
        BlockInput::Stem(stem) => {
            stem.check();
            assert!(
                weights.expand.is_none() && !residual && c_in == STEM_CHANNELS && stem.out_size() == (height, width),
                "mbconv: the stem feeds a block without expansion or residual"
            );
            (&[][..], Some(stem))
        }
    };
    let band = if oh <= 16 { oh } else { 8 };
    let out = &mut out[..batch * oh * ow * c_out];
    out.par_chunks_mut(oh * ow * c_out).enumerate().for_each(|(image, image_out)| {
        let x_image = x.get(image * height * width * c_in..(image + 1) * height * width * c_in).unwrap_or_default();
        let stem = stem.as_ref().map(|s| (s, image));
        image_out.par_chunks_mut(band * ow * c_out).enumerate().for_each(|(b, band_out)| {
            BAND_BUFFERS.with_borrow_mut(|(staged, dw_out, scratch, bscratch)| {
                simd(
                    #[inline(always)]
                    || {
                        mbconv_band(
                            x_image,
                            stem,
                            &shape,
                            &dw,
                            weights,
                            residual,
                            b * band,
                            band_out,
                            (staged, dw_out, scratch, bscratch),
                        )
                    },
                )
            })
        });
    });
    (oh, ow)
}

thread_local! {
    /// Each thread's buffers for [`mbconv_band`], kept between bands, layers
    /// and batches: a fresh buffer per band (`for_each_init` makes one per
    /// split of the work) cost a zero-fill of its pages each time.
    #[allow(clippy::type_complexity)]
    static BAND_BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>, Scratch, amx::Scratch)> = std::cell::RefCell::default();
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn mbconv_band(
    x_image: &[f32],
    stem: Option<(&Stem, usize)>,
    shape: &MbConvShape,
    dw: &DepthwiseShape,
    weights: &MbConvWeights,
    residual: bool,
    oy0: usize,
    band_out: &mut [f32],
    (staged, dw_out, scratch, bscratch): (&mut Vec<f32>, &mut Vec<f32>, &mut Scratch, &mut amx::Scratch),
) {
    let MbConvShape { height, width, c_in, c_mid, c_out, kernel, stride, .. } = *shape;
    let ow = dw.out_width;
    let n_out = band_out.len() / (ow * c_out);
    // 1. The input rows under the band, expanded (bias + ReLU6) into zero-padded staging rows.
    let pw = padded_width(dw);
    let rows = (n_out - 1) * stride + kernel;
    staged.resize(rows * pw * c_mid, 0.0);
    // With "same" padding and a kernel at least as wide as its stride, the
    // padded rows hold every input column.
    assert!(pw - dw.pad_left >= width, "mbconv: a staging row shorter than its input row");
    // The image rows under the band: staging rows `top..top + (hi - lo)`.
    let first = (oy0 * stride) as isize - dw.pad_top as isize;
    let (lo, hi) = (first.max(0) as usize, ((first + rows as isize).min(height as isize)).max(0) as usize);
    let top = (lo as isize - first) as usize;
    for r in 0..rows {
        let slot = &mut staged[r * pw * c_mid..(r + 1) * pw * c_mid];
        if r < top || r >= top + (hi - lo) {
            slot.fill(0.0);
        } else {
            slot[..dw.pad_left * c_mid].fill(0.0);
            slot[(dw.pad_left + width) * c_mid..].fill(0.0);
        }
    }
    let m = (hi - lo) * width;
    let input = || &x_image[lo * width * c_in..hi * width * c_in];
    // Where input pixel `p` (of the band's rows) lands in the staging rows.
    let place = |p: usize| ((top + p / width) * pw + dw.pad_left + p % width) * c_mid;
    match (weights.expand, weights.expand_q, weights.expand_b, weights.expand_f) {
        // int8: row by row, bias + ReLU6 in the microkernel's store.
        (Some((_, bias)), Some(q), _, _) => {
            for (r, src) in input().chunks_exact(width * c_in).enumerate() {
                q.matmul(src, &mut staged[place(r * width)..][..width * c_mid], Epilogue::BiasRelu6(bias), scratch)
            }
        }
        // The tiles take every row of the band in one product, written in place.
        (Some((_, bias)), None, Some(b), _) => {
            b.product(b.rows(&mut bscratch.input, input()), m, staged, place, Epilogue::BiasRelu6(bias))
        }
        // f32 on AVX-512: the weights packed at load, bias + ReLU6 in the store.
        (Some((_, bias)), None, None, Some(f)) => f.product(input(), m, staged, place, Epilogue::BiasRelu6(bias)),
        // f32 elsewhere: one `gemm` over the band's rows (it packs the weights once,
        // not once a row) into `dw_out`, then bias + ReLU6 into place.
        (Some((w_t, bias)), None, None, None) => {
            dw_out.resize(m * c_mid, 0.0);
            matmul_serial(input(), c_in, w_t, &mut dw_out[..m * c_mid], false);
            for (r, sums) in dw_out[..m * c_mid].chunks_exact(width * c_mid).enumerate() {
                let dst = &mut staged[place(r * width)..][..width * c_mid];
                for (d_px, s_px) in dst.chunks_exact_mut(c_mid).zip(sums.chunks_exact(c_mid)) {
                    for ((d, &v), &b) in d_px.iter_mut().zip(s_px).zip(bias) {
                        *d = relu6(v + b);
                    }
                }
            }
        }
        // The stem's rows computed in place (the stem's output never
        // travels to memory: writing and copying it was 0.2 ms an image).
        (None, ..) => match stem {
            Some((stem, image)) => {
                for r in 0..hi - lo {
                    stem.row(image, lo + r, &mut staged[place(r * width)..][..width * c_mid]);
                }
            }
            None => {
                for (r, src) in input().chunks_exact(width * c_in).enumerate() {
                    staged[place(r * width)..][..width * c_mid].copy_from_slice(src);
                }
            }
        },
    }
    // 2. Depthwise over the staged rows: f32, or straight into the int8
    //    or bf16 product's rows.
    let (dw_w, dw_b) = weights.depthwise;
    let pixels = n_out * ow;
    if weights.project_q.is_some() {
        let bytes = scratch.relu6_rows(pixels, c_mid);
        for (i, row_out) in bytes.chunks_exact_mut(ow * c_mid).enumerate() {
            depthwise_row_staged(&staged[i * stride * pw * c_mid..], dw, dw_w, dw_b, row_out);
        }
    } else if weights.project_b.is_some() {
        let mid = Rows::room(&mut bscratch.mid, pixels, c_mid);
        for (i, row_out) in mid.chunks_exact_mut(ow * c_mid).enumerate() {
            depthwise_row_staged(&staged[i * stride * pw * c_mid..], dw, dw_w, dw_b, row_out);
        }
    } else {
        dw_out.resize(pixels * c_mid, 0.0);
        for (i, row_out) in dw_out.chunks_exact_mut(ow * c_mid).enumerate() {
            depthwise_row_staged(&staged[i * stride * pw * c_mid..], dw, dw_w, dw_b, row_out);
        }
    }
    // 3. Projection, starting from bias (+ the block's input rows when residual).
    let (p_w, p_b) = weights.project;
    let res = residual.then(|| &x_image[oy0 * width * c_in..][..band_out.len()]);
    // The tiles, the int8 and the packed products start from bias and
    // residual in their store; `gemm` adds onto an output filled with them.
    let epilogue = Epilogue::BiasResidual(p_b, res);
    match (weights.project_q, weights.project_b, weights.project_f) {
        (Some(q), _, _) => q.matmul_quantized(pixels, band_out, epilogue, scratch),
        (None, Some(b), _) => b.product(Rows::of(&bscratch.mid), pixels, band_out, |p| p * c_out, epilogue),
        (None, None, Some(f)) => f.product(dw_out, pixels, band_out, |p| p * c_out, epilogue),
        (None, None, None) => {
            match res {
                Some(res) => {
                    for (d_px, r_px) in band_out.chunks_exact_mut(c_out).zip(res.chunks_exact(c_out)) {
                        for ((d, &r), &b) in d_px.iter_mut().zip(r_px).zip(p_b) {
                            *d = r + b;
                        }
                    }
                }
                None => {
                    for d_px in band_out.chunks_exact_mut(c_out) {
                        d_px.copy_from_slice(p_b);
                    }
                }
            }
            matmul_serial(dw_out, c_mid, p_w, band_out, true)
        }
    }
}

/// `out (+)= x @ w_t` on one thread (the caller parallelises over bands):
/// `x` is `[m, k]`, `w_t` is `[k, n]`, `out` is `[m, n]`.
fn matmul_serial(x: &[f32], k: usize, w_t: &[f32], out: &mut [f32], accumulate: bool) {
    let m = x.len() / k;
    let n = w_t.len() / k;
    assert_eq!(x.len(), m * k);
    assert_eq!(out.len(), m * n);
    // SAFETY: the asserts pin the slices to the extents passed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w_t.as_ptr(),
            1,
            n as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Bias, ReLU6, then global average pooling: `[n, pixels, c] -> [n, c]`.
pub fn relu6_mean_pool(x: &[f32], batch: usize, bias: &[f32]) -> Vec<f32> {
    let channels = bias.len();
    let per_image = x.len() / batch;
    let pixels = per_image / channels;
    let mut out = vec![0f32; batch * channels];
    out.par_chunks_mut(channels).enumerate().for_each(|(n, acc)| {
        for px in x[n * per_image..(n + 1) * per_image].chunks_exact(channels) {
            for ((a, &v), &b) in acc.iter_mut().zip(px).zip(bias) {
                *a += relu6(v + b);
            }
        }
        let scale = 1.0 / pixels as f32;
        for a in acc.iter_mut() {
            *a *= scale;
        }
    });
    out
}

/// The depthwise kernel as a candle op, for tests and for callers holding tensors:
/// `(n, h, w, c)` input, `(k, k, c)` weights, `(c,)` bias -> ReLU6 output, TF SAME padding.
pub fn depthwise_tensor(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    bias: &candle_core::Tensor,
    stride: usize,
) -> candle_core::Result<candle_core::Tensor> {
    let (n, h, wd, c) = x.dims4()?;
    let (k, _, _) = w.dims3()?;
    let shape = DepthwiseShape::same(n, h, wd, c, k, stride);
    let xv = x.flatten_all()?.to_vec1::<f32>()?;
    let wv = w.flatten_all()?.to_vec1::<f32>()?;
    let bv = bias.to_vec1::<f32>()?;
    let mut out = vec![0f32; n * shape.out_height * shape.out_width * c];
    depthwise(&xv, shape, &wv, &bv, None, &mut out);
    candle_core::Tensor::from_vec(out, (n, shape.out_height, shape.out_width, c), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn same_padding_matches_tensorflow() {
        // 224 -> 112 with k3 s2: one pixel of padding, after the input.
        assert_eq!(same_padding(224, 3, 2), (112, 0));
        // 56 -> 28 with k5 s2: three pixels, one before.
        assert_eq!(same_padding(56, 5, 2), (28, 1));
        // stride 1 keeps the size, symmetric padding.
        assert_eq!(same_padding(14, 5, 1), (14, 2));
        // odd sizes (Lite2 at 260 px): 65 -> 33 with k5 s2 pads 2 before.
        assert_eq!(same_padding(65, 5, 2), (33, 2));
    }

    /// candle's own grouped convolution is the ground truth for the depthwise kernel.
    #[test]
    fn depthwise_matches_candle_grouped_conv() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // Rows of 8 outputs or more take the eight-pixel kernels, each stride
        // and kernel size; narrower ones the four-pixel ones; channels short
        // of 16 the scalar tail.
        for &(h, w, c, k, stride) in &[
            (9, 7, 16, 3, 1),
            (10, 10, 24, 3, 2),
            (11, 8, 5, 5, 2),
            (6, 6, 3, 5, 1),
            (7, 20, 32, 5, 1),
            (9, 19, 48, 3, 2),
            (8, 17, 16, 5, 2),
            (6, 13, 40, 3, 1),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, h, w, c), &dev)?;
            let wt = Tensor::randn(0f32, 0.5, (k, k, c), &dev)?;
            let b = Tensor::randn(0f32, 0.5, c, &dev)?;
            let ours = depthwise_tensor(&x, &wt, &b, stride)?;

            let shape = DepthwiseShape::same(2, h, w, c, k, stride);
            let pad_b = (shape.out_height - 1) * stride + k - h - shape.pad_top;
            let pad_r = (shape.out_width - 1) * stride + k - w - shape.pad_left;
            let xn = x.permute((0, 3, 1, 2))?.pad_with_zeros(2, shape.pad_top, pad_b)?.pad_with_zeros(
                3,
                shape.pad_left,
                pad_r,
            )?;
            let wn = wt.permute((2, 0, 1))?.unsqueeze(1)?.contiguous()?;
            let reference = xn
                .conv2d(&wn, 0, stride, 1, c)?
                .broadcast_add(&b.reshape((1, c, 1, 1))?)?
                .clamp(0f32, 6f32)?
                .permute((0, 2, 3, 1))?;
            let diff = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "h{h} w{w} c{c} k{k} s{stride}: max diff {diff}");
        }
        Ok(())
    }

    /// candle's convolution is the ground truth for the stem, on sizes whose
    /// "same" padding falls after the image (224) and on both sides (23).
    #[test]
    fn stem_matches_candle_conv() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for &(h, w) in &[(224, 224), (23, 37), (20, 9)] {
            let x = Tensor::randn(0f32, 1.0, (2, h, w, 3), &dev)?;
            let wt = Tensor::randn(0f32, 0.5, (3, 3, 3, STEM_CHANNELS), &dev)?;
            let b = Tensor::randn(0f32, 0.5, STEM_CHANNELS, &dev)?;
            let (oh, pad_top) = same_padding(h, 3, 2);
            let (ow, pad_left) = same_padding(w, 3, 2);
            let mut out = vec![0f32; 2 * oh * ow * STEM_CHANNELS];
            let flat = x.flatten_all()?.to_vec1::<f32>()?;
            let images: Vec<&[f32]> = flat.chunks_exact(h * w * 3).collect();
            let (w_flat, b_flat) = (wt.flatten_all()?.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
            let got = Stem { images: &images, height: h, width: w, w: &w_flat, bias: &b_flat }.run(&mut out);
            assert_eq!(got, (oh, ow));
            let ours = Tensor::from_vec(out, (2, oh, ow, STEM_CHANNELS), &dev)?;
            let (pad_b, pad_r) = ((oh - 1) * 2 + 3 - h - pad_top, (ow - 1) * 2 + 3 - w - pad_left);
            let xn = x.permute((0, 3, 1, 2))?.pad_with_zeros(2, pad_top, pad_b)?.pad_with_zeros(3, pad_left, pad_r)?;
            let wn = wt.permute((3, 2, 0, 1))?.contiguous()?;
            let reference = xn
                .conv2d(&wn, 0, 2, 1, 1)?
                .broadcast_add(&b.reshape((1, STEM_CHANNELS, 1, 1))?)?
                .clamp(0f32, 6f32)?
                .permute((0, 2, 3, 1))?;
            let diff = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{h}x{w}: max diff {diff}");
        }
        Ok(())
    }

    #[test]
    fn pointwise_adds_bias_and_residual() {
        // x: 2 pixels x 3 channels; w_t: 3 x 2.
        let x = [1.0, 2.0, 3.0, -1.0, 0.0, 1.0];
        let w_t = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let bias = [0.5, -0.5];
        let residual = [10.0, 20.0, 30.0, 40.0];
        let mut out = [0f32; 4];
        pointwise(&x, 3, &w_t, Some(&bias), Some(&residual), &mut out);
        assert_eq!(
            out,
            [1.0 + 3.0 + 0.5 + 10.0, 2.0 + 3.0 - 0.5 + 20.0, -1.0 + 1.0 + 0.5 + 30.0, 0.0 + 1.0 - 0.5 + 40.0]
        );
    }

    #[test]
    fn pool_applies_relu6_before_averaging() {
        let x = [-1.0, 8.0, 3.0, 2.0]; // one image, two pixels, two channels
        assert_eq!(relu6_mean_pool(&x, 1, &[0.0, 0.0]), vec![1.5, 4.0]);
        assert_eq!(relu6_mean_pool(&x, 1, &[1.0, -2.0]), vec![2.0, 3.0]);
    }
}
