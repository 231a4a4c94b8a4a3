//! The f32 path of the 1x1 convolutions on AVX-512: weights packed once
//! at load, products with the block's epilogue in the microkernel's store.
//!
//! Why our own and not `gemm` (which the rest of the crate uses, and which
//! runs where AVX-512 is missing): profiled on the f32 forward pass
//! (`perf record` on `cargo bench --bench embed`, session 13), gemm's
//! microkernels ran near the FMA peak, but it packed the same weights again
//! on every call (8 % of the pass), and its product had to land in a buffer
//! of its own, which a second pass then read for bias + ReLU6 and copied
//! into the depthwise's zero-padded rows (5-6 %). Here the weights are
//! packed at load, and a tile of sums goes from the registers through the
//! epilogue to its row, wherever that is: the same contract as the bf16
//! tiles of [`super::amx`] and the int8 path of [`super::int8`].
//!
//! The microkernel keeps 24 output vectors in registers: 8 rows x 48
//! outputs or 12 x 32 (12 x 16 for a panel's last 16). Each step loads one
//! row of the weight panel and broadcasts one input of each row, read where
//! the rows are. (Packing the rows first, as gemm does, took a fifth of the
//! forward pass as a scalar transpose: 204 img/s, below gemm's 241.)

use super::int8::Epilogue;

/// f32 lanes of one AVX-512 register.
const LANES: usize = 16;
/// Outputs per weight panel: three registers.
const PANEL: usize = 3 * LANES;
/// Inputs per slice of a panel (128 x 48 floats, 24 KB, half of L1).
/// Measured on the f32 forward pass, alternating: 64 inputs 263, 128 281,
/// 256 270, whole panels 268 img/s.
const KC: usize = 128;

/// Whether this CPU runs the packed kernels (AVX-512 F), unless
/// `IMGSEARCH_NO_PACKED` is set (then `gemm` runs: the benches' baseline).
/// Checked once: every product asserts it.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("IMGSEARCH_NO_PACKED").is_none() && is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// A `[k, n]` weight matrix in panels of 48 outputs: panel `j` is
/// `[k, 48]`, zero past `n`.
pub struct PackedMatrix {
    k: usize,
    n: usize,
    w: Vec<f32>,
}

impl PackedMatrix {
    /// Packs `w_t` (`[k, n]`, row-major).
    pub fn new(w_t: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w_t.len(), k * n, "packed: weights are not [k, n]");
        let panels = n.div_ceil(PANEL);
        let mut w = vec![0f32; panels * k * PANEL];
        for (j, panel) in w.chunks_exact_mut(k * PANEL).enumerate() {
            let cols = (n - j * PANEL).min(PANEL);
            for (i, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                row[..cols].copy_from_slice(&w_t[i * n + j * PANEL..][..cols]);
            }
        }
        Self { k, n, w }
    }

    /// `out = x @ w` for `x` `[m, k]` and `out` `[m, n]`, in parallel over
    /// blocks of rows (the head).
    pub fn matmul_parallel(&self, x: &[f32], out: &mut [f32]) {
        use rayon::prelude::*;
        let rows = 96;
        out.par_chunks_mut(rows * self.n).zip(x.par_chunks(rows * self.k)).for_each(|(o, x)| {
            let n = self.n;
            self.product(x, x.len() / self.k, o, |p| p * n, Epilogue::Store)
        });
    }

    /// The product of `x` (`[m, k]`, row-major) with these weights on this
    /// thread; row `p` of the result goes to `out[place(p)..][..n]` through
    /// `epilogue`.
    pub fn product(&self, x: &[f32], m: usize, out: &mut [f32], place: impl Fn(usize) -> usize, epilogue: Epilogue) {
        let (start, relu6) = match epilogue {
            Epilogue::BiasRelu6(bias) => (Start::Bias(bias, None), true),
            // The sums start from the bias and residual in the registers.
            Epilogue::BiasResidual(bias, residual) => (Start::Bias(bias, residual), false),
            Epilogue::Accumulate => (Start::Out, false),
            Epilogue::Store => (Start::Zero, false),
        };
        self.run(x, m, out, place, start, relu6)
    }

    fn run(&self, x: &[f32], m: usize, out: &mut [f32], place: impl Fn(usize) -> usize, start: Start, relu6: bool) {
        assert!(available(), "the packed path runs only where `packed::available()`");
        let k = self.k;
        assert!(x.len() >= m * k, "packed: {} inputs for {m} x {k}", x.len());
        if let Start::Bias(bias, _) = start {
            assert!(bias.len() >= self.n, "packed: bias shorter than {}", self.n);
        }
        AT.with_borrow_mut(|at| {
            at.clear();
            at.extend((0..m).map(place));
            if let Some(p) = at.iter().position(|&at| at + self.n > out.len()) {
                panic!("packed: row {p} placed past the output");
            }
            if let Start::Bias(_, Some(res)) = start {
                if let Some(p) = at.iter().position(|&at| at + self.n > res.len()) {
                    panic!("packed: row {p}'s residual past its end");
                }
            }
            // SAFETY: AVX-512 F is there (`available`), `x` holds `m` rows
            // of `k` (checked above), each panel is `[k, 48]`, the bias
            // (checked above) reaches `n`, every row's `at + n` is inside
            // `out` and the residual, laid out as `out` (checked above);
            // loads and stores past `n` are masked off.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                self.panels(x, at, out, start, relu6)
            };
        });
    }

    /// Every panel times the rows `x` (`[at.len(), k]`): a panel's slice of
    /// `KC` inputs (24 KB) stays in L1 while all the rows go by. (Blocks of
    /// 24 rows times every panel read each panel from L2 again per block:
    /// 192 bytes of weights per step of 24 FMAs against 32 bytes of rows.)
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn panels(&self, x: &[f32], at: &[usize], out: &mut [f32], start: Start, relu6: bool) {
        let k = self.k;
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        // Slices of `k` after the first add onto its sums in `out`, which
        // the ReLU6 store cannot: there the whole `k` (an expansion's
        // input, 192 at most in Lite0 and Lite2) goes at once.
        let kc = if relu6 { k } else { KC };
        for (j, panel) in self.w.chunks_exact(k * PANEL).enumerate() {
            let j0 = j * PANEL;
            let cols = (self.n - j0).min(PANEL);
            for k0 in (0..k).step_by(kc) {
                let (bias, residual, from_out) = match start {
                    _ if k0 > 0 => (None, None, true),
                    Start::Zero => (None, None, false),
                    Start::Out => (None, None, true),
                    Start::Bias(b, r) => (Some(b.as_ptr().add(j0)), r.map(|r| r.as_ptr().add(j0)), false),
                };
                let t = Tile {
                    k: kc.min(k - k0),
                    lda: k,
                    b: panel.as_ptr().add(k0 * PANEL),
                    op,
                    j0,
                    cols,
                    bias,
                    residual,
                    from_out,
                    relu6,
                };
                let a = xp.add(k0);
                // The widest registers the panel's columns fill.
                match cols.div_ceil(LANES) {
                    3 => t.all_rows::<8, 3>(a, at),
                    2 => t.all_rows::<12, 2>(a, at),
                    _ => t.all_rows::<12, 1>(a, at),
                }
            }
        }
    }
}

thread_local! {
    /// A thread's row places for [`PackedMatrix::product`], worked out once
    /// per product, not once per panel.
    static AT: std::cell::RefCell<Vec<usize>> = std::cell::RefCell::default();
}

/// Where a product's sums start.
#[derive(Clone, Copy)]
enum Start<'a> {
    Zero,
    /// What `out` holds.
    Out,
    /// The bias, plus a row of the residual (laid out as `out`).
    Bias(&'a [f32], Option<&'a [f32]>),
}

/// One weight panel's product, for the microkernel.
struct Tile {
    /// Inputs in this slice of the panel, and the rows' stride.
    k: usize,
    lda: usize,
    /// The panel, `[k, 48]`.
    b: *const f32,
    op: *mut f32,
    /// The panel's first output and how many of its 48 are real.
    j0: usize,
    cols: usize,
    /// Where the sums start: the bias (at `j0`), plus the residual's row
    /// (at `at + j0`), or `out`'s row.
    bias: Option<*const f32>,
    residual: Option<*const f32>,
    from_out: bool,
    /// ReLU6 on the way out.
    relu6: bool,
}

/// `N` rows of `at` from `r0`, as an array.
fn rows<const N: usize>(at: &[usize], r0: usize) -> &[usize; N] {
    at[r0..r0 + N].try_into().expect("N rows from r0")
}

impl Tile {
    /// All rows `at` (from `a`, `lda` apart) in microkernels of `MR` rows,
    /// then what is left in 8, 4, 2 and 1. (Rounding the last tile up to
    /// `MR` rows wasted a seventh of the work on the 7 x 7 maps' 49 rows.)
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn all_rows<const MR: usize, const NV: usize>(&self, a: *const f32, at: &[usize]) {
        let m = at.len();
        let mut r0 = 0;
        while r0 < m {
            let x = a.add(r0 * self.lda);
            r0 += match m - r0 {
                left if left >= MR => {
                    self.run::<MR, NV>(x, rows(at, r0));
                    MR
                }
                8.. => {
                    self.run::<8, NV>(x, rows(at, r0));
                    8
                }
                4.. => {
                    self.run::<4, NV>(x, rows(at, r0));
                    4
                }
                2.. => {
                    self.run::<2, NV>(x, rows(at, r0));
                    2
                }
                _ => {
                    self.run::<1, NV>(x, rows(at, r0));
                    1
                }
            };
        }
    }

    /// `MR` rows by `NV` registers of outputs; `a` points at the first of
    /// the rows, `lda` apart, and row `r` goes to `at[r] + j0`. The rows
    /// are a fixed-size array: every loop over them is unrolled, so the
    /// sums stay in registers (a loop bounded by a slice's length kept
    /// them in memory, stored at every step: half the speed).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn run<const MR: usize, const NV: usize>(&self, a: *const f32, at: &[usize; MR]) {
        use std::arch::x86_64::*;
        let mask = |v: usize| -> __mmask16 {
            match self.cols.saturating_sub(v * LANES) {
                c if c >= LANES => !0,
                c => (1u16 << c) - 1,
            }
        };
        let masks: [__mmask16; NV] = std::array::from_fn(mask);
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        if let Some(b) = self.bias {
            let bias: [__m512; NV] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], b.add(v * LANES)));
            for row in acc.iter_mut() {
                *row = bias;
            }
        }
        if let Some(res) = self.residual {
            for (row, &at) in acc.iter_mut().zip(at) {
                let d = res.add(at);
                for (v, acc) in row.iter_mut().enumerate() {
                    *acc = _mm512_add_ps(*acc, _mm512_maskz_loadu_ps(masks[v], d.add(v * LANES)));
                }
            }
        } else if self.from_out {
            for (row, &at) in acc.iter_mut().zip(at) {
                let d = self.op.add(at + self.j0);
                *row = std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], d.add(v * LANES)));
            }
        }
        let x: [*const f32; MR] = std::array::from_fn(|r| a.add(r * self.lda));
        for p in 0..self.k {
            let w = self.b.add(p * PANEL);
            let w: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(w.add(v * LANES)));
            for (r, row) in acc.iter_mut().enumerate() {
                let xr = _mm512_set1_ps(*x[r].add(p));
                for (v, acc) in row.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(xr, w[v], *acc);
                }
            }
        }
        let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
        for (row, &at) in acc.iter().zip(at) {
            let d = self.op.add(at + self.j0);
            for (v, &s) in row.iter().enumerate() {
                let s = if self.relu6 { _mm512_min_ps(_mm512_max_ps(s, zero), six) } else { s };
                _mm512_mask_storeu_ps(d.add(v * LANES), masks[v], s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w_t: &[f32], k: usize, n: usize) -> Vec<f32> {
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for p in 0..k {
                for j in 0..n {
                    out[i * n + j] += x[i * k + p] * w_t[p * n + j];
                }
            }
        }
        out
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rnd = crate::test_uniform(seed);
        (0..len).map(|_| rnd() * 2.0).collect()
    }

    /// Whether the kernels ran; where not, the CPU must lack AVX-512 (or
    /// they were turned off), so nothing takes this path.
    fn runs_here() -> bool {
        if !available() {
            #[cfg(target_arch = "x86_64")]
            assert!(
                !is_x86_feature_detected!("avx512f") || std::env::var_os("IMGSEARCH_NO_PACKED").is_some(),
                "the CPU has AVX-512 but the packed kernels are off"
            );
            return false;
        }
        true
    }

    /// Every panel width (48, 32, 16 and masked tails), row counts short
    /// of a microkernel's, inputs in several slices (300 > 2 x `KC`), each
    /// epilogue, and rows placed with gaps between them.
    #[test]
    fn products_match_a_plain_matmul_with_each_epilogue() {
        if !runs_here() {
            return;
        }
        for &(m, k, n) in &[
            (1, 3, 1),
            (7, 16, 96),
            (25, 24, 144),
            (49, 32, 16),
            (30, 40, 24),
            (61, 80, 112),
            (9, 8, 200),
            (13, 300, 50),
        ] {
            let (x, w_t, bias) = (values(m * k, 1), values(k * n, 2), values(n, 3));
            let expect = reference(&x, &w_t, k, n);
            let packed = PackedMatrix::new(&w_t, k, n);
            // Rows `stride` apart with a sentinel in the gaps.
            let stride = n + 5;
            let (start, residual) = (values(m * stride, 4), values(m * stride, 5));
            for epilogue in [
                Epilogue::Store,
                Epilogue::Accumulate,
                Epilogue::BiasRelu6(&bias),
                Epilogue::BiasResidual(&bias, Some(&residual)),
            ] {
                let mut out = start.clone();
                packed.product(&x, m, &mut out, |p| p * stride, epilogue);
                for i in 0..m {
                    for j in 0..stride {
                        let got = out[i * stride + j];
                        let want = match (j < n, epilogue) {
                            (false, _) => start[i * stride + j],
                            (true, Epilogue::Store) => expect[i * n + j],
                            (true, Epilogue::Accumulate) => start[i * stride + j] + expect[i * n + j],
                            (true, Epilogue::BiasRelu6(b)) => (expect[i * n + j] + b[j]).clamp(0.0, 6.0),
                            (true, Epilogue::BiasResidual(b, r)) => {
                                expect[i * n + j] + b[j] + r.map_or(0.0, |r| r[i * stride + j])
                            }
                        };
                        assert!((got - want).abs() < 1e-4, "m{m} k{k} n{n} row {i} col {j}: {got} against {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn projections_start_from_bias_and_residual() {
        if !runs_here() {
            return;
        }
        for &(m, k, n) in &[(30, 144, 24), (49, 1152, 320), (5, 40, 16)] {
            let (x, w_t, bias, residual) = (values(m * k, 7), values(k * n, 8), values(n, 9), values(m * n, 10));
            let expect = reference(&x, &w_t, k, n);
            let packed = PackedMatrix::new(&w_t, k, n);
            for with_residual in [false, true] {
                let mut out = vec![f32::NAN; m * n];
                let epilogue = Epilogue::BiasResidual(&bias, with_residual.then_some(&residual[..]));
                packed.product(&x, m, &mut out, |p| p * n, epilogue);
                for (i, (got, sum)) in out.iter().zip(&expect).enumerate() {
                    let want = sum + bias[i % n] + if with_residual { residual[i] } else { 0.0 };
                    assert!((got - want).abs() < 1e-3, "m{m} k{k} n{n} at {i}: {got} against {want}");
                }
            }
        }
    }

    #[test]
    fn the_parallel_product_covers_every_row() {
        if !runs_here() {
            return;
        }
        let (m, k, n) = (300, 20, 70);
        let (x, w_t) = (values(m * k, 5), values(k * n, 6));
        let mut out = vec![f32::NAN; m * n];
        PackedMatrix::new(&w_t, k, n).matmul_parallel(&x, &mut out);
        for (got, want) in out.iter().zip(reference(&x, &w_t, k, n)) {
            assert!((got - want).abs() < 1e-4, "{got} against {want}");
        }
    }
}
