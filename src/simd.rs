//! Runtime dispatch to the widest SIMD the CPU has, for our own hot loops.

/// Runs `f` compiled for AVX-512 (or AVX2+FMA) when the CPU has it. `f` and
/// everything it calls should be `#[inline(always)]` so that the loops inside
/// are vectorised for the wider registers; `gemm` dispatches the same way.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features this copy is compiled for.
            return unsafe { run_avx512(f) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

/// Whether the CPU has AVX-512 VNNI (`vpdpbusd`, with the byte/word
/// instructions beside it): the int8 kernels of the graph and the CNN.
pub(crate) fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
