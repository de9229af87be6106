//! Depthwise causal conv1d over the Mamba-2 `xBC` channels, for prefill and one-token decode.

use super::{check_len, check_nonzero, rows_of, silu, PAR_MIN_WORK};
use crate::error::Result;
use rayon::prelude::*;

/// Causal depthwise conv over a sequence, with an optional carried state.
///
/// `x [T, C]`, `weight [C, K]`, `bias [C]`, `state [C, K-1]` = the `K-1` inputs just before `x`,
/// oldest first (`None` = zeros). `out_t[c] = bias[c] + sum_k w[c,k] * x_{t-K+1+k}[c]`:
/// `w[c, K-1]` multiplies the current token. With `silu` the output goes through SiLU.
/// Returns `(out [T, C], final_state [C, K-1])`, the state being the last `K-1` inputs of
/// `state ++ x` (so it still holds carried values when `T < K-1`).
pub fn causal_conv1d(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    state: Option<&[f32]>,
    channels: usize,
    width: usize,
    silu_act: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    const OP: &str = "causal_conv1d";
    let (c, kw) = (channels, width);
    check_nonzero(OP, &[("C", c), ("K", kw)])?;
    let t = rows_of(OP, "x", x.len(), ("C", c))?;
    check_len(OP, "weight", weight.len(), &[("C", c), ("K", kw)])?;
    if let Some(b) = bias {
        check_len(OP, "bias", b.len(), &[("C", c)])?;
    }
    let km1 = kw - 1;
    if let Some(s) = state {
        check_len(OP, "state", s.len(), &[("C", c), ("K-1", km1)])?;
    }
    // History rows `[K-1 + T, C]`: the carried inputs transposed to token-major, then x. Every
    // output row is then a K-row window of it, which vectorises over channels.
    let mut hist = vec![0f32; (km1 + t) * c];
    if let Some(s) = state {
        for ch in 0..c {
            for j in 0..km1 {
                hist[j * c + ch] = s[ch * km1 + j];
            }
        }
    }
    hist[km1 * c..].copy_from_slice(x);
    // Weight transposed to `[K, C]` for the same reason.
    let mut wt = vec![0f32; kw * c];
    for ch in 0..c {
        for j in 0..kw {
            wt[j * c + ch] = weight[ch * kw + j];
        }
    }
    let mut out = vec![0f32; t * c];
    let row = |(ti, o): (usize, &mut [f32])| {
        match bias {
            Some(b) => o.copy_from_slice(b),
            None => o.fill(0.0),
        }
        for j in 0..kw {
            let h = &hist[(ti + j) * c..][..c];
            let w = &wt[j * c..][..c];
            for ((a, &hv), &wv) in o.iter_mut().zip(h).zip(w) {
                *a += wv * hv;
            }
        }
        if silu_act {
            o.iter_mut().for_each(|a| *a = silu(*a));
        }
    };
    if t * c * kw >= PAR_MIN_WORK {
        out.par_chunks_mut(c).enumerate().for_each(row);
    } else {
        out.chunks_mut(c).enumerate().for_each(row);
    }
    let mut final_state = vec![0f32; c * km1];
    for ch in 0..c {
        for j in 0..km1 {
            final_state[ch * km1 + j] = hist[(t + j) * c + ch];
        }
    }
    Ok((out, final_state))
}

/// One decode step of the causal conv for a batch of sequences.
///
/// `x [B, C]` (one token per sequence), `state [B, C, K-1]` (updated in place: shifted left by one,
/// `x` appended), `weight [C, K]`, `bias [C]`. Returns `out [B, C]`, SiLU'd when `silu` is set.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_update(
    x: &[f32],
    state: &mut [f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    batch: usize,
    channels: usize,
    width: usize,
    silu_act: bool,
) -> Result<Vec<f32>> {
    const OP: &str = "causal_conv1d_update";
    let (c, kw) = (channels, width);
    check_nonzero(OP, &[("B", batch), ("C", c), ("K", kw)])?;
    let km1 = kw - 1;
    check_len(OP, "x", x.len(), &[("B", batch), ("C", c)])?;
    check_len(
        OP,
        "state",
        state.len(),
        &[("B", batch), ("C", c), ("K-1", km1)],
    )?;
    check_len(OP, "weight", weight.len(), &[("C", c), ("K", kw)])?;
    if let Some(b) = bias {
        check_len(OP, "bias", b.len(), &[("C", c)])?;
    }
    let mut out = vec![0f32; batch * c];
    for (i, o) in out.iter_mut().enumerate() {
        let ch = i % c;
        let s = &mut state[i * km1..(i + 1) * km1];
        let w = &weight[ch * kw..(ch + 1) * kw];
        let xv = x[i];
        let mut acc = bias.map_or(0.0, |b| b[ch]);
        for j in 0..km1 {
            acc += w[j] * s[j];
        }
        acc += w[km1] * xv;
        if km1 > 0 {
            s.copy_within(1.., 0);
            s[km1 - 1] = xv;
        }
        *o = if silu_act { silu(acc) } else { acc };
    }
    Ok(out)
}
