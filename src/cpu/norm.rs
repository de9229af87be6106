//! RMS norms as HF Falcon-H1 computes them in f32 (no `1 +` offset on the weight).

use super::{check_divides, check_len, check_nonzero, rows_of, silu, PAR_MIN_WORK};
use crate::error::Result;
use rayon::prelude::*;

/// `x * rsqrt(mean(x^2) + eps)` over `row`, in place, then times `weight`. The mean of squares is
/// accumulated in f64 so a 5120-wide row with values near 1e3 loses nothing.
#[inline]
fn norm_row(row: &mut [f32], weight: &[f32], eps: f32) {
    // Four independent f64 lanes so the loop vectorises; still exact enough for any row.
    let mut acc = [0f64; 4];
    let chunks = row.chunks_exact(4);
    let rest: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum();
    for c in chunks {
        for k in 0..4 {
            acc[k] += (c[k] as f64) * (c[k] as f64);
        }
    }
    let ss = acc.iter().sum::<f64>() + rest;
    let var = (ss / row.len() as f64) as f32;
    let inv = 1.0 / (var + eps).sqrt();
    for (v, &w) in row.iter_mut().zip(weight) {
        *v = w * (*v * inv);
    }
}

/// Applies `f` to each `width`-wide row of `data`, in parallel when the data is large.
fn for_rows(data: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if data.len() >= PAR_MIN_WORK {
        data.par_chunks_mut(width)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    } else {
        data.chunks_mut(width)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    }
}

/// RMSNorm over the last dim: `x [rows, d]`, `weight [d]` (rows = `x.len() / d`) -> `[rows, d]`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Result<Vec<f32>> {
    const OP: &str = "rms_norm";
    let d = weight.len();
    check_nonzero(OP, &[("d (weight length)", d)])?;
    rows_of(OP, "x", x.len(), ("d", d))?;
    let mut out = x.to_vec();
    for_rows(&mut out, d, |_, r| norm_row(r, weight, eps));
    Ok(out)
}

/// Residual add then RMSNorm: `residual [rows, d] += delta [rows, d]`, returns
/// `rms_norm(residual, weight [d])`.
pub fn add_rms_norm(
    residual: &mut [f32],
    delta: &[f32],
    weight: &[f32],
    eps: f32,
) -> Result<Vec<f32>> {
    const OP: &str = "add_rms_norm";
    let d = weight.len();
    check_nonzero(OP, &[("d (weight length)", d)])?;
    let rows = rows_of(OP, "residual", residual.len(), ("d", d))?;
    check_len(OP, "delta", delta.len(), &[("rows", rows), ("d", d)])?;
    residual.iter_mut().zip(delta).for_each(|(r, &v)| *r += v);
    rms_norm(residual, weight, eps)
}

/// Mamba-2 gated group RMSNorm (HF `FalconH1RMSNormGated`): `y, z [rows, Ds]`, `weight [Ds]`,
/// each row split into `groups` contiguous groups of `Ds / groups` channels normalised apart.
///
/// `norm_before_gate = false` (the releases): `norm(y * silu(z)) * w`;
/// `true` (HF's default): `norm(y) * w * silu(z)`. Returns `[rows, Ds]`.
pub fn gated_rms_norm(
    y: &[f32],
    z: &[f32],
    weight: &[f32],
    groups: usize,
    eps: f32,
    norm_before_gate: bool,
) -> Result<Vec<f32>> {
    const OP: &str = "gated_rms_norm";
    let ds = weight.len();
    check_nonzero(OP, &[("Ds (weight length)", ds), ("G", groups)])?;
    check_divides(OP, ("Ds", ds), ("G", groups))?;
    let rows = rows_of(OP, "y", y.len(), ("Ds", ds))?;
    check_len(OP, "z", z.len(), &[("rows", rows), ("Ds", ds)])?;
    let gs = ds / groups;
    let mut out = y.to_vec();
    for_rows(&mut out, ds, |i, r| {
        let zr = &z[i * ds..(i + 1) * ds];
        if !norm_before_gate {
            r.iter_mut().zip(zr).for_each(|(v, &g)| *v *= silu(g));
        }
        for (rg, wg) in r.chunks_mut(gs).zip(weight.chunks(gs)) {
            norm_row(rg, wg, eps);
        }
        if norm_before_gate {
            r.iter_mut().zip(zr).for_each(|(v, &g)| *v *= silu(g));
        }
    });
    Ok(out)
}

/// Gate without a norm: `y * silu(z)`, both `[n]` (any shape, same length). Returns `[n]`.
pub fn silu_gate(y: &[f32], z: &[f32]) -> Result<Vec<f32>> {
    check_len("silu_gate", "z", z.len(), &[("n (length of y)", y.len())])?;
    Ok(y.iter().zip(z).map(|(&a, &g)| a * silu(g)).collect())
}
