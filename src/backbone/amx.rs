//! The bf16 path of the 1x1 convolutions on AMX tiles (Intel Sapphire
//! Rapids and later): `tdpbf16ps` multiplies a 16 x 32 bf16 tile of pixels
//! by a 32 x 16 tile of weights into 16 x 16 f32 sums, 8192 multiply-adds
//! an instruction where an AVX-512 FMA does 16.
//!
//! bf16 keeps 8 bits of mantissa. The activations are rounded to it as
//! they are read; the weights are kept as two bf16 terms, the value and
//! its rounding error (about 16 bits together), each multiplied in turn.
//! Measured on the 1000 Pascal photos against f32
//! (`IMGSEARCH_BENCH_PHASE=agreement cargo bench --bench embed`): with
//! two-term weights on every product the top-5 classes overlap at 0.996;
//! one-term weights on the projections leave 0.990, on the expansions they
//! cost nothing but gained only 2 % speed; int8 weights reach 0.95.
//!
//! Where the time went, and what the code does about it (session 11,
//! 216 -> 300 img/s; 355 with the depthwise kernel of `kernels`): the
//! products used to run per row of pixels (7 or 14 of a tile's 32 rows
//! filled), so a band's rows now go through one product; the output row
//! of each pixel is worked out once per block of rows (a division per
//! output tile had cost a fifth); the epilogue runs on 32-float rows with
//! masks computed once. The tile loads are ordered so that each product
//! can start as soon as its two tiles are in.
//!
//! The tile instructions are written as inline assembly: Rust's AMX
//! intrinsics are not stable. Linux hands out the tile state only to a
//! process that asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), done once in
//! [`available`].

use std::cell::RefCell;

use super::int8::Epilogue;

/// Rows of pixels (and of the weights' bf16 pairs) in a tile.
const ROWS: usize = 16;
/// bf16 inputs per tile row (64 bytes).
const KB: usize = 32;
/// Output channels per tile (16 f32 = 64 bytes).
const NB: usize = 16;

/// Whether this CPU and kernel run AMX bf16 tiles (checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var_os("IMGSEARCH_NO_AMX").is_some() {
            return false;
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
            let leaf = std::arch::x86_64::__cpuid_count(7, 0);
            if leaf.edx >> 22 & 1 == 0 || leaf.edx >> 24 & 1 == 0 || !is_x86_feature_detected!("avx512bw") {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: asks the kernel for the tile state; no memory is passed.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// `f32` rounded to the nearest bf16 (ties to even), as its 16 bits.
#[inline(always)]
pub fn bf16(v: f32) -> u16 {
    let u = v.to_bits();
    ((u + 0x7FFF + (u >> 16 & 1)) >> 16) as u16
}

fn f32_of(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A `[k, n]` weight matrix packed into AMX B tiles, as two bf16 terms.
pub struct BfMatrix {
    k: usize,
    n: usize,
    /// `k` rounded up to whole tiles.
    kp: usize,
    /// `n` rounded up to pairs of tiles.
    np: usize,
    /// Tile `(nb, kb)` at `(nb * kp / KB + kb) * ROWS * KB`: row `r` holds,
    /// for each of 16 outputs, the inputs `2r` and `2r + 1` of the block.
    hi: Vec<u16>,
    lo: Vec<u16>,
}

impl BfMatrix {
    /// Packs `w_t` (`[k, n]`).
    pub fn new(w_t: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w_t.len(), k * n);
        let (kp, np) = (k.div_ceil(KB) * KB, n.div_ceil(2 * NB) * 2 * NB);
        let (mut hi, mut lo) = (vec![0u16; kp * np], vec![0u16; kp * np]);
        for nb in 0..np / NB {
            for kb in 0..kp / KB {
                let tile = (nb * kp / KB + kb) * ROWS * KB;
                for r in 0..ROWS {
                    for e in 0..KB {
                        let (i, j) = (kb * KB + 2 * r + e % 2, nb * NB + e / 2);
                        if i < k && j < n {
                            let w = w_t[i * n + j];
                            let h = bf16(w);
                            hi[tile + r * KB + e] = h;
                            lo[tile + r * KB + e] = bf16(w - f32_of(h));
                        }
                    }
                }
            }
        }
        Self { k, n, kp, np, hi, lo }
    }

    /// `x` (`[m, k]` f32) as the bf16 rows of a product, in `buf`.
    pub fn rows<'a>(&self, buf: &'a mut Vec<Bf16>, x: &[f32]) -> Rows<'a> {
        to_bf16(x, Rows::room(buf, x.len() / self.k, self.k));
        let buf: &'a Vec<Bf16> = buf;
        Rows(buf)
    }

    /// `out (+)= x @ w` for `x` `[m, k]`, `out` `[m, n]`, on this thread.
    pub fn matmul(&self, x: &[f32], out: &mut [f32], epilogue: Epilogue) {
        let m = out.len() / self.n;
        assert_eq!(out.len(), m * self.n);
        assert_eq!(x.len(), m * self.k);
        A.with(|a| {
            let mut a = a.borrow_mut();
            let rows = self.rows(&mut a, x);
            self.product(rows, m, out, |p| p * self.n, epilogue);
        });
    }

    /// [`BfMatrix::matmul`] over all cores, in chunks of rows, stored.
    pub fn matmul_parallel(&self, x: &[f32], out: &mut [f32]) {
        use rayon::prelude::*;
        let rows = 64;
        out.par_chunks_mut(rows * self.n)
            .zip(x.par_chunks(rows * self.k))
            .for_each(|(o, x)| self.matmul(x, o, Epilogue::Store));
    }

    /// The product of `m` bf16 rows (`[m, k]`, made by [`Rows`]) with these
    /// weights; row `p` of the result goes to `out[place(p)..][..n]`
    /// through `epilogue`.
    ///
    /// Tiles of 32 rows: for each pair of output tiles, four f32 tiles of
    /// sums over all of `k`, stored to a buffer in L1 and from there through
    /// the epilogue (AVX-512) to their rows, wherever those are: the
    /// expansion writes straight into the depthwise's zero-padded rows.
    pub fn product(&self, a: Rows, m: usize, out: &mut [f32], place: impl Fn(usize) -> usize, epilogue: Epilogue) {
        assert!(available(), "the AMX path runs only where `amx::available()`");
        assert!(a.0.len() >= Rows::len(m, self.k), "bf16 rows: {} values for {m} x {}", a.0.len(), self.k);
        // SAFETY: AMX and AVX-512 are there (`available` checked); the
        // assert above keeps every tile load of `a` inside it, and `block`
        // writes `out` through bounds-checked slices.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            configure_tiles();
            for m0 in (0..m).step_by(2 * ROWS) {
                let rows = (m - m0).min(2 * ROWS);
                // Where each row goes, worked out once for all outputs.
                let mut at = [0usize; 2 * ROWS];
                for (r, at) in at[..rows].iter_mut().enumerate() {
                    *at = place(m0 + r);
                }
                self.block(&a.0[m0 * self.k..], &at[..rows], out, epilogue);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (out, place, epilogue);
            unreachable!("`available` is false off x86-64");
        }
    }

    /// Up to 32 rows of `a` (row stride `k`) times every output. A tile row
    /// reads `KB` values from its row's start, past `k` into the next row:
    /// those meet the weights' zero rows.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn block(&self, a: &[Bf16], at: &[usize], out: &mut [f32], epilogue: Epilogue) {
        use std::arch::asm;
        let rows = at.len();
        let mut c = [0f32; 2 * ROWS * 2 * NB];
        let c_stride = 2 * NB * 4;
        let a_stride = self.k * 2;
        let (a0, a1) = (a.as_ptr(), a.as_ptr().add(ROWS * self.k));
        let tiles_k = self.kp / KB;
        let (hi, lo) = (self.hi.as_ptr(), self.lo.as_ptr());
        for nb in (0..self.np / NB).step_by(2) {
            let j0 = nb * NB;
            if j0 >= self.n {
                break; // padding only
            }
            let cp = c.as_mut_ptr();
            let (p00, p01, p10, p11) = (cp, cp.add(NB), cp.add(ROWS * 2 * NB), cp.add(ROWS * 2 * NB + NB));
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for kb in 0..tiles_k {
                let (b0, b1) = ((nb * tiles_k + kb) * ROWS * KB, ((nb + 1) * tiles_k + kb) * ROWS * KB);
                if rows > ROWS {
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm6, [{h0} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{h1} + {sb}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        "tileloadd tmm6, [{l0} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{l1} + {sb}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(kb * KB),
                        a1 = in(reg) a1.add(kb * KB),
                        h0 = in(reg) hi.add(b0),
                        h1 = in(reg) hi.add(b1),
                        l0 = in(reg) lo.add(b0),
                        l1 = in(reg) lo.add(b1),
                        sa = in(reg) a_stride,
                        sb = in(reg) KB * 2,
                        options(nostack, readonly),
                    );
                } else {
                    // One tile of rows: the second would be all padding.
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm6, [{h0} + {sb}*1]",
                        "tileloadd tmm7, [{h1} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm6, [{l0} + {sb}*1]",
                        "tileloadd tmm7, [{l1} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        a0 = in(reg) a0.add(kb * KB),
                        h0 = in(reg) hi.add(b0),
                        h1 = in(reg) hi.add(b1),
                        l0 = in(reg) lo.add(b0),
                        l1 = in(reg) lo.add(b1),
                        sa = in(reg) a_stride,
                        sb = in(reg) KB * 2,
                        options(nostack, readonly),
                    );
                }
            }
            asm!(
                "tilestored [{p00} + {s}*1], tmm0",
                "tilestored [{p01} + {s}*1], tmm1",
                "tilestored [{p10} + {s}*1], tmm2",
                "tilestored [{p11} + {s}*1], tmm3",
                p00 = in(reg) p00, p01 = in(reg) p01, p10 = in(reg) p10, p11 = in(reg) p11,
                s = in(reg) c_stride,
                options(nostack),
            );
            // (Running the previous pair's epilogue here instead, while the
            // tiles work, was slower: 42 against 38 us for 1904 x 16 x 96.)
            self.finish(&c, j0, at, out, epilogue);
        }
    }

    /// The epilogue of one pair of output tiles (columns `j0..j0 + 32`):
    /// each row's sums in `c` (masked past `n`) to its place in `out`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn finish(
        &self,
        c: &[f32; 2 * ROWS * 2 * NB],
        j0: usize,
        at: &[usize],
        out: &mut [f32],
        epilogue: Epilogue,
    ) {
        use std::arch::x86_64::*;
        let cols = (self.n - j0).min(2 * NB);
        let mask = |from: usize| -> __mmask16 {
            match cols.saturating_sub(from) {
                c if c >= NB => !0,
                c => (1u16 << c) - 1,
            }
        };
        let (k0, k1) = (mask(0), mask(NB));
        let (op, cp) = (out.as_mut_ptr(), c.as_ptr());
        let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
        let (b0, b1) = match epilogue {
            Epilogue::BiasRelu6(bias) | Epilogue::BiasResidual(bias, _) => {
                assert!(bias.len() >= self.n);
                (
                    _mm512_maskz_loadu_ps(k0, bias.as_ptr().add(j0)),
                    _mm512_maskz_loadu_ps(k1, bias.as_ptr().add(j0 + NB)),
                )
            }
            _ => (zero, zero),
        };
        for (r, &at) in at.iter().enumerate() {
            assert!(at + j0 + cols <= out.len(), "row {r} placed past the output");
            let (d, s) = (op.add(at + j0), cp.add(r * 2 * NB));
            let (mut v0, mut v1) = (_mm512_loadu_ps(s), _mm512_loadu_ps(s.add(NB)));
            match epilogue {
                Epilogue::Store => {}
                Epilogue::Accumulate => {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, d));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, d.add(NB)));
                }
                Epilogue::BiasRelu6(_) => {
                    v0 = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v0, b0), zero), six);
                    v1 = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v1, b1), zero), six);
                }
                Epilogue::BiasResidual(_, residual) => {
                    v0 = _mm512_add_ps(v0, b0);
                    v1 = _mm512_add_ps(v1, b1);
                    if let Some(res) = residual {
                        assert!(at + j0 + cols <= res.len(), "row {r}'s residual past its end");
                        let e = res.as_ptr().add(at + j0);
                        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, e));
                        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, e.add(NB)));
                    }
                }
            }
            _mm512_mask_storeu_ps(d, k0, v0);
            _mm512_mask_storeu_ps(d.add(NB), k1, v1);
        }
    }
}

/// A thread's bf16 rows inside an MBConv band: the block's input rows
/// (for the expansion) and the depthwise outputs (for the projection).
#[derive(Default)]
pub struct Scratch {
    pub input: Vec<Bf16>,
    pub mid: Vec<Bf16>,
}

/// A bf16 value, as its 16 bits (the upper half of an `f32`).
#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

/// Rows of bf16 values for [`BfMatrix::product`], back to back, followed by
/// the slack its tile loads read past the last row (zeros, or earlier
/// rows: finite values that meet zero weights or land in dropped rows).
#[derive(Clone, Copy)]
pub struct Rows<'a>(&'a [Bf16]);

impl<'a> Rows<'a> {
    /// Values a buffer needs for `m` rows of `k`: whole tiles of rows, and
    /// one more tile row past the end.
    pub fn len(m: usize, k: usize) -> usize {
        m.div_ceil(2 * ROWS) * 2 * ROWS * k + KB
    }

    /// Makes room in `buf` for `m` rows of `k` and returns them, for the
    /// caller to write; [`Rows::of`] then hands them to a product.
    pub fn room(buf: &mut Vec<Bf16>, m: usize, k: usize) -> &mut [Bf16] {
        let len = Self::len(m, k);
        if buf.len() < len {
            buf.resize(len, Bf16(0));
        }
        &mut buf[..m * k]
    }

    /// The rows written into `buf` after [`Rows::room`].
    pub fn of(buf: &'a [Bf16]) -> Self {
        Rows(buf)
    }
}

/// `src` rounded to bf16 into `dst` (same length), 16 at a time.
pub fn to_bf16(src: &[f32], dst: &mut [Bf16]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512BW; lengths are equal.
        unsafe { to_bf16_avx512(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = Bf16(bf16(s));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [Bf16]) {
    use std::arch::x86_64::*;
    let whole = src.len() / 16 * 16;
    for i in (0..whole).step_by(16) {
        let h = bf16_lanes(_mm512_loadu_ps(src.as_ptr().add(i)));
        _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
    }
    for i in whole..src.len() {
        dst[i] = Bf16(bf16(src[i]));
    }
}

/// 16 floats rounded to bf16 (ties to even), as in [`bf16`].
///
/// # Safety
/// The CPU has AVX-512F and BW.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn bf16_lanes(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let u = _mm512_castps_si512(v);
    let odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    let r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), odd), 16);
    _mm512_cvtepi32_epi16(r)
}

/// Loads this thread's tile configuration once: eight tiles of 16 rows of
/// 64 bytes (C in 0-3, A in 4-5, B in 6-7). It is never released: every
/// product here uses the same shapes, and the kernel saves the tiles with
/// the thread.
#[cfg(target_arch = "x86_64")]
unsafe fn configure_tiles() {
    thread_local! {
        static CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if CONFIGURED.get() {
        return;
    }
    let mut config = [0u8; 64];
    config[0] = 1; // palette 1
    for t in 0..8 {
        config[16 + 2 * t] = 64; // bytes per row
        config[48 + t] = ROWS as u8;
    }
    std::arch::asm!("ldtilecfg [{}]", in(reg) config.as_ptr(), options(nostack, readonly));
    CONFIGURED.set(true);
}

thread_local! {
    /// Each thread's bf16 rows for [`BfMatrix::matmul`].
    static A: RefCell<Vec<Bf16>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3F80);
        assert_eq!(f32_of(bf16(1.0 + 1.0 / 512.0)), 1.0, "a tie goes to the even mantissa");
        assert_eq!(f32_of(bf16(1.0 + 3.0 / 512.0)), 1.0 + 4.0 / 512.0);
        assert_eq!(f32_of(bf16(-2.5)), -2.5);
    }

    /// The tile product is the f32 one within bf16's rounding of the
    /// pixels (the weights' two terms are nearly exact), for sizes that
    /// fill no tile exactly, stored and accumulated.
    #[test]
    fn the_amx_product_follows_the_f32_one() {
        if !available() {
            // Then nothing runs on tiles: the CPU has none (or they are turned off).
            #[cfg(target_arch = "x86_64")]
            let has_tiles = std::arch::x86_64::__cpuid_count(7, 0).edx >> 24 & 1 == 1;
            #[cfg(not(target_arch = "x86_64"))]
            let has_tiles = false;
            assert!(
                !has_tiles || std::env::var_os("IMGSEARCH_NO_AMX").is_some(),
                "the CPU has AMX tiles but the kernel refused them (arch_prctl)"
            );
            return;
        }
        // 45 rows: a whole block of 32 and an edge; 37 outputs: whole tiles,
        // an edge, and a tile of padding only; 40 inputs (a whole tile and
        // part of one) and 20 (part of one), rounded to bf16 (8 bits).
        for (k, precision) in [(40, 256.0), (20, 256.0)] {
            let (m, n) = (45, 37);
            let mut rnd = crate::test_uniform(11);
            let w: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rnd() * 4.0).collect();
            let b = BfMatrix::new(&w, k, n);
            let mut stored = vec![f32::NAN; m * n];
            b.matmul(&x, &mut stored, Epilogue::Store);
            let mut summed = vec![1.0f32; m * n];
            b.matmul(&x, &mut summed, Epilogue::Accumulate);
            let bias: Vec<f32> = (0..n).map(|j| j as f32 / 10.0 - 1.0).collect();
            let mut activated = vec![f32::NAN; m * n];
            b.matmul(&x, &mut activated, Epilogue::BiasRelu6(&bias));
            let residual: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
            let mut projected = vec![f32::NAN; m * n];
            b.matmul(&x, &mut projected, Epilogue::BiasResidual(&bias, Some(&residual)));
            for p in 0..m {
                for j in 0..n {
                    let exact: f32 = (0..k).map(|i| x[p * k + i] * w[i * n + j]).sum();
                    let bound: f32 =
                        (0..k).map(|i| (x[p * k + i] * w[i * n + j]).abs()).sum::<f32>() / precision + 1e-5;
                    let got = stored[p * n + j];
                    assert!((got - exact).abs() <= bound, "k {k} ({p}, {j}): {got} vs {exact}");
                    assert!((summed[p * n + j] - 1.0 - exact).abs() <= bound, "k {k} ({p}, {j}) accumulated");
                    let relu6 = (exact + bias[j]).clamp(0.0, 6.0);
                    assert!((activated[p * n + j] - relu6).abs() <= bound, "k {k} ({p}, {j}) bias + ReLU6");
                    let sum = exact + bias[j] + residual[p * n + j];
                    assert!((projected[p * n + j] - sum).abs() <= bound, "k {k} ({p}, {j}) bias + residual");
                }
            }
        }
    }
}
