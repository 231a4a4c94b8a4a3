//! The dense layer both encoders run (a 1x1 convolution in the CNN, the
//! linear layers of the text encoder): one `gemm` product with the bias and
//! residual fused in. A bottom-floor module, so neither encoder imports the
//! other.

use rayon::prelude::*;

use crate::simd::simd;

/// A dense layer (a 1x1 convolution over pixels, a linear layer over
/// tokens): `out[m, :] = bias + residual[m, :] + x[m, :] @ w_t`.
///
/// `x` is `[m, c_in]`, `w_t` is `[c_in, c_out]`, `out` is `[m, c_out]`, all
/// row-major. Without `bias` (and residual) gemm writes the bare product
/// without reading `out` first: the consumer adds the bias as it reads.
pub fn dense(x: &[f32], c_in: usize, w_t: &[f32], bias: Option<&[f32]>, residual: Option<&[f32]>, out: &mut [f32]) {
    let c_out = w_t.len() / c_in;
    let m = x.len() / c_in;
    assert_eq!(x.len(), m * c_in, "dense: input is not [m, c_in]");
    assert_eq!(w_t.len() % c_in, 0, "dense: weights are not [c_in, c_out]");
    assert_eq!(out.len(), m * c_out, "dense: output is not [m, c_out]");
    assert!(bias.is_none_or(|b| b.len() == c_out), "dense: bias is not [c_out]");
    let read_dst = bias.is_some() || residual.is_some();
    if read_dst {
        init_bias_residual(bias, residual, c_out, out);
    }
    // SAFETY: the asserts above pin every slice to the extents passed here.
    unsafe {
        gemm::gemm(
            m,
            c_out,
            c_in,
            out.as_mut_ptr(),
            1,
            c_out as isize,
            read_dst,
            x.as_ptr(),
            1,
            c_in as isize,
            w_t.as_ptr(),
            1,
            c_out as isize,
            if read_dst { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// Starts an output from `bias + residual`, in parallel row chunks.
fn init_bias_residual(bias: Option<&[f32]>, residual: Option<&[f32]>, c_out: usize, out: &mut [f32]) {
    let zeros = vec![0f32; c_out];
    let bias = bias.unwrap_or(&zeros);
    let rows_per_task = (16384 / c_out).max(1);
    out.par_chunks_mut(rows_per_task * c_out).enumerate().for_each(|(chunk, dst)| {
        simd(
            #[inline(always)]
            || match residual {
                Some(res) => {
                    let base = chunk * rows_per_task * c_out;
                    let res = &res[base..base + dst.len()];
                    for (d_row, r_row) in dst.chunks_exact_mut(c_out).zip(res.chunks_exact(c_out)) {
                        for ((d, r), b) in d_row.iter_mut().zip(r_row).zip(bias) {
                            *d = r + b;
                        }
                    }
                }
                None => {
                    for d_row in dst.chunks_exact_mut(c_out) {
                        d_row.copy_from_slice(bias);
                    }
                }
            },
        )
    });
}
