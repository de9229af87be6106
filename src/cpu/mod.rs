//! CPU reference backend, f32 throughout (f64 where a reduction needs it).
//!
//! Every op takes plain row-major, token-major slices plus the dims that give them a shape, checks
//! every length before touching the data and returns an error naming the op, the tensor and both
//! the expected shape and what was found. The GPU kernels are tested against these functions, so
//! they favour clarity and accuracy; they are still parallel (rayon) and use a real GEMM so that a
//! tiny model runs in milliseconds.

pub mod attention;
pub mod conv;
pub mod embed;
pub mod matmul;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod ssd;

pub use attention::{causal_attention, AttnDims};
pub use conv::{causal_conv1d, causal_conv1d_update};
pub use embed::{embedding, lm_head};
pub use matmul::linear;
pub use mlp::{mlp, swiglu};
pub use norm::{add_rms_norm, gated_rms_norm, rms_norm, silu_gate};
pub use rope::{rope_inv_freq, rope_neox};
pub use ssd::{ssd_chunked, ssd_recurrent, ssm_state_update, SsdDims, SsdInputs, SsmUpdateDims};

use crate::error::{Error, Result};

/// Below this many scalar operations a parallel split costs more than it saves.
pub(crate) const PAR_MIN_WORK: usize = 1 << 15;

/// Checks that `found` equals the product of `dims`.
///
/// The error reads like `ssd_chunked: `x` has 100 values, expected [T=10, H=2, P=4] = 80`, so a
/// caller can tell which tensor is wrong and which dimension to suspect. An overflowing product is
/// an error too (it can only come from absurd dims).
pub fn check_len(op: &str, name: &str, found: usize, dims: &[(&str, usize)]) -> Result<()> {
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &(_, d)| acc.checked_mul(d));
    let shape = dims
        .iter()
        .map(|(n, d)| format!("{n}={d}"))
        .collect::<Vec<_>>()
        .join(", ");
    match expected {
        Some(e) if e == found => Ok(()),
        Some(e) => Err(Error::invalid(format!(
            "{op}: `{name}` has {found} values, expected [{shape}] = {e}"
        ))),
        None => Err(Error::invalid(format!(
            "{op}: `{name}` shape [{shape}] overflows usize"
        ))),
    }
}

/// Errors when any of the named dims is zero: a zero dim never describes a real call and would
/// otherwise show up later as a division by zero or an empty, silently wrong result.
pub(crate) fn check_nonzero(op: &str, dims: &[(&str, usize)]) -> Result<()> {
    for &(name, d) in dims {
        if d == 0 {
            return Err(Error::invalid(format!(
                "{op}: dimension {name} must be > 0"
            )));
        }
    }
    Ok(())
}

/// Errors unless `outer` is a multiple of `inner` (heads per group, heads per kv head).
pub(crate) fn check_divides(op: &str, outer: (&str, usize), inner: (&str, usize)) -> Result<()> {
    if inner.1 == 0 || outer.1 % inner.1 != 0 {
        return Err(Error::invalid(format!(
            "{op}: {}={} must be a multiple of {}={}",
            outer.0, outer.1, inner.0, inner.1
        )));
    }
    Ok(())
}

/// Number of rows of a `[rows, cols]` slice whose row count is implied by its length.
pub(crate) fn rows_of(op: &str, name: &str, len: usize, cols: (&str, usize)) -> Result<usize> {
    if cols.1 == 0 || len % cols.1 != 0 || len == 0 {
        return Err(Error::invalid(format!(
            "{op}: `{name}` has {len} values, expected a non-empty multiple of {}={}",
            cols.0, cols.1
        )));
    }
    Ok(len / cols.1)
}

/// SiLU, `x * sigmoid(x)`. Written as a division so that a large negative `x` gives `-0`, not NaN.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Softplus as torch computes it (beta 1, threshold 20): above the threshold it returns `x`
/// unchanged, which is what HF's dt path sees.
#[inline]
pub(crate) fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Validates a `(lo, hi)` time-step limit: NaN or `lo > hi` would make the clamp meaningless.
pub(crate) fn check_dt_limit(op: &str, limit: (f32, f32)) -> Result<()> {
    let (lo, hi) = limit;
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(Error::invalid(format!(
            "{op}: dt_limit ({lo}, {hi}) must satisfy lo <= hi"
        )));
    }
    Ok(())
}

/// The time step a Mamba-2 head uses: `clamp(softplus(raw + bias), lo, hi)`, in torch's order
/// (max with lo first, then min with hi).
#[inline]
pub(crate) fn dt_value(raw: f32, bias: f32, limit: (f32, f32)) -> f32 {
    softplus(raw + bias).max(limit.0).min(limit.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_len_message() {
        let e = check_len("ssd_chunked", "x", 100, &[("T", 10), ("H", 2), ("P", 4)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "ssd_chunked: `x` has 100 values, expected [T=10, H=2, P=4] = 80"
        );
        assert!(check_len("op", "x", 80, &[("T", 10), ("H", 2), ("P", 4)]).is_ok());
        assert!(check_len("op", "x", 0, &[("T", usize::MAX), ("H", 2)]).is_err());
    }

    #[test]
    fn softplus_and_silu() {
        assert_eq!(softplus(25.0), 25.0);
        assert!((softplus(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
        assert_eq!(silu(-1000.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
    }
}
