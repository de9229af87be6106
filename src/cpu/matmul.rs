//! Dense projections, `y = x W^T` with W in HF `[out, in]` layout, through the `gemm` crate.

use super::{check_len, check_nonzero};
use crate::error::Result;
use gemm::Parallelism;

/// Multiply-adds below which gemm's thread fan-out costs more than it saves.
const GEMM_PAR_MIN_FLOPS: usize = 1 << 20;

/// `y[rows, out_dim] = x[rows, in_dim] · w[out_dim, in_dim]^T` in f32.
///
/// Errors when a dim is zero or a slice length does not match its shape.
pub fn linear(
    x: &[f32],
    w: &[f32],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> Result<Vec<f32>> {
    const OP: &str = "linear";
    check_nonzero(OP, &[("rows", rows), ("in", in_dim), ("out", out_dim)])?;
    check_len(OP, "x", x.len(), &[("rows", rows), ("in", in_dim)])?;
    check_len(OP, "w", w.len(), &[("out", out_dim), ("in", in_dim)])?;
    let mut y = vec![0f32; rows * out_dim];
    let work = rows.saturating_mul(in_dim).saturating_mul(out_dim);
    let par = if work >= GEMM_PAR_MIN_FLOPS && rayon::current_num_threads() > 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the three buffers were checked above to hold exactly rows*in, out*in and rows*out
    // f32 values, and the strides below address them as the matrices
    //   dst[m, n] = y[m*out + n], lhs[m, k] = x[m*in + k], rhs[k, n] = w[n*in + k],
    // so every access stays in bounds. `y` is not aliased by `x` or `w`.
    unsafe {
        gemm::gemm(
            rows,
            out_dim,
            in_dim,
            y.as_mut_ptr(),
            1,
            out_dim as isize,
            false,
            x.as_ptr(),
            1,
            in_dim as isize,
            w.as_ptr(),
            in_dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    Ok(y)
}
