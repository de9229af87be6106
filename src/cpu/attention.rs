//! Causal grouped-query attention over a whole sequence's keys (prefill or decode).

use super::{check_divides, check_len, check_nonzero, PAR_MIN_WORK};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Head counts and size of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnDims {
    /// Query heads (Hq).
    pub n_heads: usize,
    /// Key/value heads (Hkv); Hq must be a multiple of it.
    pub n_kv_heads: usize,
    /// Size of each head (hd).
    pub head_dim: usize,
}

/// f32 dot product with eight partial sums: vectorises and halves the rounding error growth of a
/// single running sum.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Causal softmax attention with GQA.
///
/// `q [Tq, Hq, hd]`; `k, v [Tk, Hkv, hd]` hold every key of the sequence so far, the new ones
/// included. Query `i` sits at absolute position `q_offset + i` and attends keys
/// `0..=q_offset + i`, so `Tk >= q_offset + Tq` is required. Query head `h` reads kv head
/// `h / (Hq / Hkv)`. Scores are scaled by `1/sqrt(hd)`; the softmax subtracts the row max and sums
/// in f64. Returns `[Tq, Hq * hd]`.
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_offset: usize,
    dims: AttnDims,
) -> Result<Vec<f32>> {
    const OP: &str = "causal_attention";
    let AttnDims {
        n_heads: hq,
        n_kv_heads: hkv,
        head_dim: hd,
    } = dims;
    check_nonzero(OP, &[("Hq", hq), ("Hkv", hkv), ("hd", hd)])?;
    check_divides(OP, ("Hq", hq), ("Hkv", hkv))?;
    let q_row = hq * hd;
    let kv_row = hkv * hd;
    if q.is_empty() || q.len() % q_row != 0 {
        return Err(Error::invalid(format!(
            "{OP}: `q` has {} values, expected a non-empty [Tq, Hq={hq}, hd={hd}]",
            q.len()
        )));
    }
    let tq = q.len() / q_row;
    if k.len() % kv_row != 0 {
        return Err(Error::invalid(format!(
            "{OP}: `k` has {} values, expected [Tk, Hkv={hkv}, hd={hd}]",
            k.len()
        )));
    }
    let tk = k.len() / kv_row;
    let reachable = matches!(q_offset.checked_add(tq), Some(need) if need <= tk);
    if !reachable {
        return Err(Error::invalid(format!(
            "{OP}: `k` holds {tk} positions but queries reach position {} (q_offset={q_offset}, Tq={tq})",
            q_offset.saturating_add(tq - 1)
        )));
    }
    check_len(OP, "v", v.len(), &[("Tk", tk), ("Hkv", hkv), ("hd", hd)])?;

    let rep = hq / hkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; tq * q_row];
    // One work item per (query, head): writes its own hd-wide slice of `out`.
    let work = |scores: &mut Vec<f32>, (idx, o): (usize, &mut [f32])| {
        let (t, h) = (idx / hq, idx % hq);
        let kvh = h / rep;
        let qv = &q[t * q_row + h * hd..][..hd];
        let n_keys = q_offset + t + 1;
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for j in 0..n_keys {
            let s = dot(qv, &k[j * kv_row + kvh * hd..][..hd]) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut denom = 0f64;
        for (j, s) in scores.iter_mut().enumerate() {
            let p = (*s - max).exp();
            *s = p;
            denom += p as f64;
            let vv = &v[j * kv_row + kvh * hd..][..hd];
            o.iter_mut().zip(vv).for_each(|(a, &b)| *a += p * b);
        }
        let inv = (1.0 / denom) as f32;
        o.iter_mut().for_each(|a| *a *= inv);
    };
    let total = tq
        .saturating_mul(hq)
        .saturating_mul(q_offset + tq)
        .saturating_mul(hd);
    if total >= PAR_MIN_WORK {
        out.par_chunks_mut(hd)
            .enumerate()
            .for_each_init(Vec::new, work);
    } else {
        let mut scores = Vec::new();
        out.chunks_mut(hd)
            .enumerate()
            .for_each(|item| work(&mut scores, item));
    }
    Ok(out)
}
