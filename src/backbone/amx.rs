//! The bf16 path of the 1x1 convolutions on AMX tiles (Intel Sapphire
//! Rapids and later): `tdpbf16ps` multiplies a 16 x 32 bf16 tile of pixels
//! by a 32 x 16 tile of weights into 16 x 16 f32 sums, 8192 multiply-adds
//! an instruction where an AVX-512 FMA does 16.
//!
//! bf16 keeps 8 bits of mantissa. The activations are rounded to it as
//! they are read; the weights are kept as two bf16 terms, the value and
//! its rounding error (about 16 bits together), each multiplied in turn.
//! Measured on the 1000 Pascal photos against f32 (ONNX graph with the
//! same rounding, `IMGSEARCH_BENCH_PHASE=agreement cargo bench --bench
//! embed` for this code): one-term weights leave the top-5 classes' overlap
//! at 0.990, two terms at 0.996; int8 weights per channel reach 0.95.
//!
//! The tile instructions are written as inline assembly: Rust's AMX
//! intrinsics are not stable. Linux hands out the tile state only to a
//! process that asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), done once in
//! [`available`].

use std::cell::RefCell;

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
fn bf16(v: f32) -> u16 {
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

    /// `out (+)= x @ w` for `x` `[m, k]`, `out` `[m, n]`, on this thread.
    pub fn matmul(&self, x: &[f32], out: &mut [f32], accumulate: bool) {
        let m = x.len() / self.k;
        assert_eq!(x.len(), m * self.k);
        assert_eq!(out.len(), m * self.n);
        assert!(available(), "the AMX path runs only where `amx::available()`");
        #[cfg(target_arch = "x86_64")]
        A.with(|a| {
            let mut a = a.borrow_mut();
            a.resize(2 * ROWS * self.kp, 0);
            for m0 in (0..m).step_by(2 * ROWS) {
                let rows = (m - m0).min(2 * ROWS);
                // SAFETY: AVX-512 comes with AMX (`available` checked it);
                // `a` holds 32 rows of `kp` bf16 and the weights whole tiles;
                // `block` writes only the first `rows` rows of its `out`.
                unsafe {
                    to_bf16_rows(&x[m0 * self.k..(m0 + rows) * self.k], self.k, self.kp, &mut a);
                    self.block(&a, &mut out[m0 * self.n..(m0 + rows) * self.n], rows, accumulate)
                }
            }
        });
    }

    /// [`BfMatrix::matmul`] over all cores, in chunks of rows.
    pub fn matmul_parallel(&self, x: &[f32], out: &mut [f32]) {
        use rayon::prelude::*;
        let rows = 64;
        out.par_chunks_mut(rows * self.n).zip(x.par_chunks(rows * self.k)).for_each(|(o, x)| self.matmul(x, o, false));
    }

    /// 32 rows of bf16 pixels (`a`) times every output: for each pair of
    /// output tiles, four f32 tiles of sums over all of `k`. A whole tile
    /// of `out` is loaded (when accumulating) and stored in place; the
    /// edges go through a buffer.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn block(&self, a: &[u16], out: &mut [f32], rows: usize, accumulate: bool) {
        use std::arch::asm;
        configure_tiles();
        let mut c = [0f32; 2 * ROWS * 2 * NB];
        let (a_stride, out_stride, c_stride) = (self.kp * 2, self.n * 4, 2 * NB * 4);
        let (a0, a1) = (a.as_ptr(), a[ROWS * self.kp..].as_ptr());
        let tiles_k = self.kp / KB;
        let cp = c.as_mut_ptr();
        let op = out.as_mut_ptr();
        for nb in (0..self.np / NB).step_by(2) {
            let j0 = nb * NB;
            // Tile (i, j): rows 16i.., columns j0 + 16j..; whole when all its rows and columns are real.
            let whole = |j: usize| rows == 2 * ROWS && j0 + (j + 1) * NB <= self.n;
            let (w0, w1) = (whole(0), whole(1));
            let at = |i: usize, j: usize| match whole(j) {
                true => (op.add(i * ROWS * self.n + j0 + j * NB), out_stride),
                false => (cp.add(i * ROWS * 2 * NB + j * NB), c_stride),
            };
            let ((p00, s00), (p01, s01), (p10, s10), (p11, s11)) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
            match (accumulate && w0, accumulate && w1) {
                (true, true) => asm!(
                    "tileloadd tmm0, [{p00} + {s0}*1]", "tileloadd tmm1, [{p01} + {s1}*1]",
                    "tileloadd tmm2, [{p10} + {s0}*1]", "tileloadd tmm3, [{p11} + {s1}*1]",
                    p00 = in(reg) p00, p01 = in(reg) p01, p10 = in(reg) p10, p11 = in(reg) p11,
                    s0 = in(reg) s00, s1 = in(reg) s01, options(nostack, readonly),
                ),
                (true, false) => asm!(
                    "tileloadd tmm0, [{p00} + {s0}*1]", "tilezero tmm1",
                    "tileloadd tmm2, [{p10} + {s0}*1]", "tilezero tmm3",
                    p00 = in(reg) p00, p10 = in(reg) p10, s0 = in(reg) s00, options(nostack, readonly),
                ),
                _ => asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem)),
            }
            for kb in 0..tiles_k {
                let (b0, b1) = ((nb * tiles_k + kb) * ROWS * KB, ((nb + 1) * tiles_k + kb) * ROWS * KB);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm6, [{h0} + {sb}*1]",
                    "tileloadd tmm7, [{h1} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm6, [{l0} + {sb}*1]",
                    "tileloadd tmm7, [{l1} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(kb * KB),
                    a1 = in(reg) a1.add(kb * KB),
                    h0 = in(reg) self.hi.as_ptr().add(b0),
                    h1 = in(reg) self.hi.as_ptr().add(b1),
                    l0 = in(reg) self.lo.as_ptr().add(b0),
                    l1 = in(reg) self.lo.as_ptr().add(b1),
                    sa = in(reg) a_stride,
                    sb = in(reg) KB * 2,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{p00} + {s00}*1], tmm0",
                "tilestored [{p01} + {s01}*1], tmm1",
                "tilestored [{p10} + {s10}*1], tmm2",
                "tilestored [{p11} + {s11}*1], tmm3",
                p00 = in(reg) p00, p01 = in(reg) p01, p10 = in(reg) p10, p11 = in(reg) p11,
                s00 = in(reg) s00, s01 = in(reg) s01, s10 = in(reg) s10, s11 = in(reg) s11,
                options(nostack),
            );
            // The edges: from the buffer into the real rows and columns.
            for j in [0, 1].into_iter().filter(|&j| !(if j == 0 { w0 } else { w1 })) {
                let (col, cols) = (j0 + j * NB, self.n.saturating_sub(j0 + j * NB).min(NB));
                if cols == 0 {
                    continue; // padding only
                }
                for r in 0..rows {
                    let dst = &mut out[r * self.n + col..][..cols];
                    let src = &c[r * 2 * NB + j * NB..][..cols];
                    match accumulate {
                        true => dst.iter_mut().zip(src).for_each(|(d, s)| *d += s),
                        false => dst.copy_from_slice(src),
                    }
                }
            }
        }
    }
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

/// `x` (`[rows, k]` f32) as 32 rows of `kp` bf16 in `a`, zeros past `k`
/// and past the last row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn to_bf16_rows(x: &[f32], k: usize, kp: usize, a: &mut [u16]) {
    let rows = x.len() / k;
    for (r, dst) in a.chunks_exact_mut(kp).enumerate() {
        match r < rows {
            true => {
                for (d, &s) in dst.iter_mut().zip(&x[r * k..(r + 1) * k]) {
                    *d = bf16(s);
                }
                dst[k..].fill(0);
            }
            false => dst.fill(0),
        }
    }
}

thread_local! {
    /// Each thread's 32 rows of bf16 pixels.
    static A: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
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
        // an edge, and a tile of padding only.
        let (m, k, n) = (45, 40, 37);
        let mut rnd = crate::test_uniform(11);
        let w: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..m * k).map(|_| rnd() * 4.0).collect();
        let b = BfMatrix::new(&w, k, n);
        let mut stored = vec![f32::NAN; m * n];
        b.matmul(&x, &mut stored, false);
        let mut summed = vec![1.0f32; m * n];
        b.matmul(&x, &mut summed, true);
        for p in 0..m {
            for j in 0..n {
                let exact: f32 = (0..k).map(|i| x[p * k + i] * w[i * n + j]).sum();
                let bound: f32 = (0..k).map(|i| (x[p * k + i] * w[i * n + j]).abs()).sum::<f32>() / 256.0 + 1e-5;
                assert!((stored[p * n + j] - exact).abs() <= bound, "({p}, {j}): {} vs {exact}", stored[p * n + j]);
                assert!((summed[p * n + j] - 1.0 - exact).abs() <= bound, "({p}, {j}) accumulated");
            }
        }
    }
}
