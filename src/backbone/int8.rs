//! The int8 path of the 1x1 convolutions (most of the network's
//! multiply-adds): weights quantised once per output channel, activations
//! per pixel as they arrive (a scale from the pixel's own largest value, so
//! nothing is calibrated and no outlier pixel costs another its precision),
//! multiplied with AVX-512 VNNI `vpdpbusd` (64 multiply-adds an instruction,
//! 4x the f32 FMA's 16) and scaled back to f32 in the same pass.
//!
//! A pixel with no negative value (every depthwise output: ReLU6) is
//! quantised to `0..=255`; one with negatives (a block's output, the next
//! block's input) to `-127..=127` shifted by 128 into the unsigned bytes
//! `vpdpbusd` wants, and `128 * column sum` of the weights is taken back
//! off. Quality against the f32 path: `imgsearch eval` (README figures).

/// Output channels per register (16 i32 lanes).
const LANES: usize = 16;
/// Pixels per microkernel tile.
const MR: usize = 8;

/// A `[k, n]` weight matrix packed for `vpdpbusd`: for each block of 16
/// output channels, for each group of 4 inputs, 16 x 4 bytes.
pub struct QuantMatrix {
    k: usize,
    n: usize,
    blocks: usize,
    packed: Vec<i8>,
    /// Per output channel (padded to the blocks): the f32 value of one step.
    scales: Vec<f32>,
    /// Per output channel: the sum of its int8 weights.
    sums: Vec<i32>,
}

impl QuantMatrix {
    /// Whether this CPU runs the int8 path, and the shape suits it (`k` a multiple of 4).
    pub fn supported(k: usize) -> bool {
        k.is_multiple_of(4) && crate::simd::has_vnni()
    }

    /// Quantises `w_t` (`[k, n]`, row-major) per output channel.
    pub fn new(w_t: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w_t.len(), k * n);
        assert_eq!(k % 4, 0, "int8 weights need k a multiple of 4");
        let blocks = n.div_ceil(LANES);
        let mut scales = vec![0f32; blocks * LANES];
        let mut sums = vec![0i32; blocks * LANES];
        let mut packed = vec![0i8; blocks * k * LANES];
        for j in 0..n {
            let max = (0..k).map(|i| w_t[i * n + j].abs()).fold(0f32, f32::max);
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales[j] = scale;
            let (b, lane) = (j / LANES, j % LANES);
            for i in 0..k {
                let q = (w_t[i * n + j] / scale).round().clamp(-127.0, 127.0) as i8;
                sums[j] += q as i32;
                packed[b * k * LANES + (i / 4) * LANES * 4 + lane * 4 + i % 4] = q;
            }
        }
        Self { k, n, blocks, packed, scales, sums }
    }

    /// `out = epilogue(x @ w)` for `x` `[m, k]`, `out` `[m, n]`. `scratch`
    /// keeps the quantised rows between calls.
    pub fn matmul(&self, x: &[f32], out: &mut [f32], epilogue: Epilogue, scratch: &mut Scratch) {
        let (k, n) = (self.k, self.n);
        let m = x.len() / k;
        assert_eq!(x.len(), m * k);
        assert_eq!(out.len(), m * n);
        let rows = m.div_ceil(MR) * MR;
        // Grown, never cleared: the rows past `m` of the last tile are
        // multiplied but never stored, so what they hold does not matter.
        if scratch.bytes.len() < rows * k {
            scratch.bytes.resize(rows * k, 0);
        }
        if scratch.row_scale.len() < rows {
            scratch.row_scale.resize(rows, 0.0);
            scratch.row_zero.resize(rows, 0);
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as below; `quantize` reads `x` and writes `scratch` within their lengths.
        unsafe {
            quantize(x, k, scratch)
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported` was asked before building the matrix (the
        // caller's contract); every pointer below stays inside its buffer:
        // `bytes` has `rows` (a multiple of MR) rows of k, `packed` `blocks`
        // blocks of `k * LANES`, and stores are masked to `n` and `m`.
        unsafe {
            self.kernel(m, scratch, out, epilogue)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel(&self, m: usize, scratch: &Scratch, out: &mut [f32], epilogue: Epilogue) {
        let mut b = 0;
        while b + 2 <= self.blocks {
            self.tile::<2>(m, b, scratch, out, epilogue);
            b += 2;
        }
        if b < self.blocks {
            self.tile::<1>(m, b, scratch, out, epilogue);
        }
    }

    /// Output channel blocks `b..b + NB` for every pixel: MR pixels x NB
    /// registers of accumulators, each broadcast 4 bytes of a pixel feeding NB
    /// `vpdpbusd`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn tile<const NB: usize>(&self, m: usize, b: usize, scratch: &Scratch, out: &mut [f32], epilogue: Epilogue) {
        use std::arch::x86_64::*;
        let (k, n) = (self.k, self.n);
        let a = scratch.bytes.as_ptr();
        let w = self.packed.as_ptr().add(b * k * LANES);
        for r0 in (0..m).step_by(MR) {
            let mut acc = [[_mm512_setzero_si512(); NB]; MR];
            for g in 0..k / 4 {
                let mut wv = [_mm512_setzero_si512(); NB];
                for (c, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm512_loadu_si512(w.add(c * k * LANES + g * LANES * 4) as *const _);
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let four = _mm512_set1_epi32((a.add((r0 + r) * k + g * 4) as *const i32).read_unaligned());
                    for c in 0..NB {
                        acc[c] = _mm512_dpbusd_epi32(acc[c], four, wv[c]);
                    }
                }
            }
            for c in 0..NB {
                let j0 = (b + c) * LANES;
                let mask: __mmask16 = if j0 + LANES <= n { 0xFFFF } else { ((1u32 << (n - j0)) - 1) as u16 };
                let scales = _mm512_loadu_ps(self.scales.as_ptr().add(j0));
                let sums = _mm512_loadu_si512(self.sums.as_ptr().add(j0) as *const _);
                let bias = match epilogue {
                    Epilogue::BiasRelu6(bias) | Epilogue::BiasResidual(bias, _) => {
                        assert!(bias.len() >= n, "int8: bias shorter than {n}");
                        _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(j0))
                    }
                    Epilogue::Accumulate | Epilogue::Store => _mm512_setzero_ps(),
                };
                for (r, acc) in acc.iter().enumerate() {
                    let p = r0 + r;
                    if p >= m {
                        break;
                    }
                    let zero = _mm512_set1_epi32(scratch.row_zero[p]);
                    let exact = _mm512_sub_epi32(acc[c], _mm512_mullo_epi32(zero, sums));
                    let scale = _mm512_mul_ps(scales, _mm512_set1_ps(scratch.row_scale[p]));
                    let dst = out.as_mut_ptr().add(p * n + j0);
                    let v = match epilogue {
                        Epilogue::BiasRelu6(_) => _mm512_min_ps(
                            _mm512_max_ps(_mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, bias), _mm512_setzero_ps()),
                            _mm512_set1_ps(6.0),
                        ),
                        Epilogue::Accumulate => {
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, _mm512_maskz_loadu_ps(mask, dst))
                        }
                        Epilogue::BiasResidual(_, None) => _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, bias),
                        Epilogue::BiasResidual(_, Some(res)) => {
                            assert!(res.len() >= (p + 1) * n, "int8: residual shorter than the output");
                            let start = _mm512_add_ps(bias, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(p * n + j0)));
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, start)
                        }
                        Epilogue::Store => _mm512_mul_ps(_mm512_cvtepi32_ps(exact), scale),
                    };
                    _mm512_mask_storeu_ps(dst, mask, v);
                }
            }
        }
    }
}

/// What a product does with its result.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// `out = relu6(x @ w + bias)` (an expansion).
    BiasRelu6(&'a [f32]),
    /// `out += x @ w`.
    Accumulate,
    /// `out = x @ w + bias (+ residual)`, the residual laid out as `out`
    /// (a projection: its output written once, not filled with bias and
    /// residual first for the product to add onto).
    BiasResidual(&'a [f32], Option<&'a [f32]>),
    /// `out = x @ w` (the head: the pooling adds the bias).
    Store,
}

/// Quantises each row of `x` (`[m, k]`) into `scratch`: its scale, its
/// zero point (0 for a row without negatives, else 128) and its bytes,
/// rounded to nearest.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize(x: &[f32], k: usize, scratch: &mut Scratch) {
    use std::arch::x86_64::*;
    let tail = k % LANES;
    let tail_mask: __mmask16 = ((1u32 << tail) - 1) as u16;
    for (p, row) in x.chunks_exact(k).enumerate() {
        let ptr = row.as_ptr();
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + LANES <= k {
            let v = _mm512_loadu_ps(ptr.add(i));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            i += LANES;
        }
        if tail > 0 {
            let v = _mm512_maskz_loadu_ps(tail_mask, ptr.add(i));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        let (lo, hi) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        let (scale, zero) =
            if lo >= 0.0 { (if hi > 0.0 { hi / 255.0 } else { 1.0 }, 0) } else { (hi.max(-lo) / 127.0, 128) };
        scratch.row_scale[p] = scale;
        scratch.row_zero[p] = zero;
        let inv = _mm512_set1_ps(1.0 / scale);
        let offset = _mm512_set1_epi32(zero);
        let out = scratch.bytes.as_mut_ptr().add(p * k);
        let mut i = 0;
        while i + LANES <= k {
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(ptr.add(i)), inv)), offset);
            _mm512_mask_cvtusepi32_storeu_epi8(out.add(i) as *mut _, 0xFFFF, q);
            i += LANES;
        }
        if tail > 0 {
            let v = _mm512_maskz_loadu_ps(tail_mask, ptr.add(i));
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), offset);
            _mm512_mask_cvtusepi32_storeu_epi8(out.add(i) as *mut _, tail_mask, q);
        }
    }
}

impl QuantMatrix {
    /// [`QuantMatrix::matmul`] over `m` rows the caller already wrote into
    /// [`Scratch::relu6_rows`].
    pub fn matmul_quantized(&self, m: usize, out: &mut [f32], epilogue: Epilogue, scratch: &Scratch) {
        assert_eq!(out.len(), m * self.n);
        assert!(scratch.bytes.len() >= m.div_ceil(MR) * MR * self.k && scratch.row_scale.len() >= m);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `matmul`: the assert pins the rows the kernel reads.
        unsafe {
            self.kernel(m, scratch, out, epilogue)
        }
    }

    /// [`QuantMatrix::matmul`] over all cores, in chunks of rows.
    pub fn matmul_parallel(&self, x: &[f32], out: &mut [f32], epilogue: Epilogue) {
        use rayon::prelude::*;
        let rows = 64;
        out.par_chunks_mut(rows * self.n)
            .zip(x.par_chunks(rows * self.k))
            .for_each_init(Scratch::default, |s, (o, x)| self.matmul(x, o, epilogue, s));
    }
}

/// Buffers a thread reuses between products.
#[derive(Default)]
pub struct Scratch {
    bytes: Vec<u8>,
    row_scale: Vec<f32>,
    row_zero: Vec<i32>,
}

impl Scratch {
    /// Room for `m` rows of `k` ReLU6 outputs as bytes (`0..=6` in 255
    /// steps, no zero point), for the caller to write and
    /// [`QuantMatrix::matmul_quantized`] to multiply.
    pub fn relu6_rows(&mut self, m: usize, k: usize) -> &mut [u8] {
        let rows = m.div_ceil(MR) * MR;
        if self.bytes.len() < rows * k {
            self.bytes.resize(rows * k, 0);
        }
        self.row_scale.clear();
        self.row_scale.resize(rows, 6.0 / 255.0);
        self.row_zero.clear();
        self.row_zero.resize(rows, 0);
        &mut self.bytes[..m * k]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The int8 product is the f32 one within the rounding of 8 bits, for
    /// signed and non-negative rows, odd sizes and accumulation.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the int8 path is AVX-512 VNNI only")]
    fn the_int8_product_follows_the_f32_one() {
        let (m, k, n) = (13, 40, 37);
        assert!(
            QuantMatrix::supported(k),
            "this CPU has no AVX-512 VNNI: the int8 path cannot run here (every machine we build on has it)"
        );
        let mut rnd = crate::test_uniform(7);
        let w: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
        let mut x: Vec<f32> = (0..m * k).map(|_| rnd() * 4.0).collect();
        for v in &mut x[..5 * k] {
            *v = v.abs(); // non-negative rows, as after ReLU6
        }
        let q = QuantMatrix::new(&w, k, n);
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1 - 1.0).collect();
        let mut scratch = Scratch::default();
        let mut summed = vec![1.0f32; m * n];
        q.matmul(&x, &mut summed, Epilogue::Accumulate, &mut scratch);
        let mut activated = vec![f32::NAN; m * n];
        q.matmul(&x, &mut activated, Epilogue::BiasRelu6(&bias), &mut scratch);
        let mut stored = vec![f32::NAN; m * n];
        q.matmul(&x, &mut stored, Epilogue::Store, &mut scratch);
        let residual: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
        let mut projected = vec![f32::NAN; m * n];
        q.matmul(&x, &mut projected, Epilogue::BiasResidual(&bias, Some(&residual)), &mut scratch);
        for p in 0..m {
            for j in 0..n {
                let exact: f32 = (0..k).map(|i| x[p * k + i] * w[i * n + j]).sum::<f32>();
                let bound: f32 = (0..k).map(|i| (x[p * k + i] * w[i * n + j]).abs()).sum::<f32>() * 0.02 + 1e-3;
                let at = p * n + j;
                assert!((summed[at] - (1.0 + exact)).abs() <= bound, "({p}, {j}): {} vs {}", summed[at], 1.0 + exact);
                assert!((stored[at] - exact).abs() <= bound, "({p}, {j}) stored");
                let relu6 = (exact + bias[j]).clamp(0.0, 6.0);
                assert!((activated[at] - relu6).abs() <= bound, "({p}, {j}): {} vs {relu6}", activated[at]);
                let sum = exact + bias[j] + residual[at];
                assert!((projected[at] - sum).abs() <= bound, "({p}, {j}): {} vs {sum}", projected[at]);
            }
        }
    }
}
