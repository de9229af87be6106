//! Mamba-2 state-space duality (SSD): the plain recurrence, the chunked algorithm and the
//! one-token state update.
//!
//! Per head `h` (group `g = h / (H/G)`, i.e. `repeat_interleave`), state `S in R^{P x N}`:
//! `S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t (outer) B_t`, `y_t = S_t C_t + D * x_t`, with
//! `dt_t = clamp(softplus(dt_raw + dt_bias), lo, hi)` and `A = -exp(A_log)`.

use super::{
    check_divides, check_dt_limit, check_len, check_nonzero, dt_value, silu, PAR_MIN_WORK,
};
use crate::error::Result;
use rayon::prelude::*;

/// Sizes of one SSD call over a single sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsdDims {
    /// Tokens (T).
    pub seqlen: usize,
    /// Heads (H).
    pub heads: usize,
    /// Channels per head (P).
    pub head_dim: usize,
    /// B/C groups (G); H must be a multiple of it.
    pub groups: usize,
    /// State size (N).
    pub state: usize,
}

/// Inputs of [`ssd_recurrent`] and [`ssd_chunked`], one sequence.
#[derive(Debug, Clone, Copy)]
pub struct SsdInputs<'a> {
    /// `[T, H, P]`.
    pub x: &'a [f32],
    /// `[T, H]` raw: the step is `clamp(softplus(dt + dt_bias), dt_limit)`.
    pub dt: &'a [f32],
    /// `[H]`.
    pub dt_bias: &'a [f32],
    /// `[H]`; `A = -exp(a_log)`.
    pub a_log: &'a [f32],
    /// `[T, G, N]`.
    pub b: &'a [f32],
    /// `[T, G, N]`.
    pub c: &'a [f32],
    /// `[H]` skip: `y += D * x`.
    pub d: Option<&'a [f32]>,
    /// `(lo, hi)` clamp of dt; `(0, inf)` is a no-op.
    pub dt_limit: (f32, f32),
    /// `[H, P, N]`; `None` = zeros.
    pub initial_state: Option<&'a [f32]>,
}

/// Sizes of one [`ssm_state_update`] call (one token per sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsmUpdateDims {
    /// Sequences (B).
    pub batch: usize,
    /// Heads (H).
    pub heads: usize,
    /// Channels per head (P).
    pub head_dim: usize,
    /// B/C groups (G); H must be a multiple of it.
    pub groups: usize,
    /// State size (N).
    pub state: usize,
}

fn validate(op: &str, inp: &SsdInputs, dims: SsdDims) -> Result<()> {
    let SsdDims {
        seqlen: t,
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
    } = dims;
    check_nonzero(op, &[("T", t), ("H", h), ("P", p), ("G", g), ("N", n)])?;
    check_divides(op, ("H", h), ("G", g))?;
    check_dt_limit(op, inp.dt_limit)?;
    check_len(op, "x", inp.x.len(), &[("T", t), ("H", h), ("P", p)])?;
    check_len(op, "dt", inp.dt.len(), &[("T", t), ("H", h)])?;
    check_len(op, "dt_bias", inp.dt_bias.len(), &[("H", h)])?;
    check_len(op, "a_log", inp.a_log.len(), &[("H", h)])?;
    check_len(op, "b", inp.b.len(), &[("T", t), ("G", g), ("N", n)])?;
    check_len(op, "c", inp.c.len(), &[("T", t), ("G", g), ("N", n)])?;
    if let Some(d) = inp.d {
        check_len(op, "d", d.len(), &[("H", h)])?;
    }
    if let Some(s) = inp.initial_state {
        check_len(
            op,
            "initial_state",
            s.len(),
            &[("H", h), ("P", p), ("N", n)],
        )?;
    }
    Ok(())
}

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

/// Runs `head_fn(h) -> (y_h [T, P], state_h [P, N])` for every head (in parallel when the work is
/// large) and assembles `(y [T, H, P], state [H, P, N])`.
fn per_head(
    dims: SsdDims,
    work: usize,
    head_fn: impl Fn(usize) -> (Vec<f32>, Vec<f32>) + Sync + Send,
) -> (Vec<f32>, Vec<f32>) {
    let (t, h, p, n) = (dims.seqlen, dims.heads, dims.head_dim, dims.state);
    let results: Vec<(Vec<f32>, Vec<f32>)> = if work >= PAR_MIN_WORK && h > 1 {
        (0..h).into_par_iter().map(&head_fn).collect()
    } else {
        (0..h).map(&head_fn).collect()
    };
    let mut y = vec![0f32; t * h * p];
    let mut state = Vec::with_capacity(h * p * n);
    for (hi, (yh, sh)) in results.into_iter().enumerate() {
        for ti in 0..t {
            y[(ti * h + hi) * p..][..p].copy_from_slice(&yh[ti * p..][..p]);
        }
        state.extend_from_slice(&sh);
    }
    (y, state)
}

/// The SSD scan as the plain per-token recurrence (f32 state). Returns
/// `(y [T, H, P], final_state [H, P, N])`. Slow for long sequences but obviously right: the
/// reference the chunked form and the kernels are checked against.
pub fn ssd_recurrent(inp: &SsdInputs, dims: SsdDims) -> Result<(Vec<f32>, Vec<f32>)> {
    validate("ssd_recurrent", inp, dims)?;
    let SsdDims {
        seqlen: t,
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
    } = dims;
    let hpg = h / g;
    let head = |hi: usize| {
        let gi = hi / hpg;
        let a = -inp.a_log[hi].exp();
        let dskip = inp.d.map_or(0.0, |d| d[hi]);
        let mut s = match inp.initial_state {
            Some(s0) => s0[hi * p * n..][..p * n].to_vec(),
            None => vec![0f32; p * n],
        };
        let mut y = vec![0f32; t * p];
        let mut db = vec![0f32; n];
        for ti in 0..t {
            let dt = dt_value(inp.dt[ti * h + hi], inp.dt_bias[hi], inp.dt_limit);
            let da = (dt * a).exp();
            let b = &inp.b[(ti * g + gi) * n..][..n];
            let c = &inp.c[(ti * g + gi) * n..][..n];
            db.iter_mut().zip(b).for_each(|(o, &bv)| *o = dt * bv);
            let x = &inp.x[(ti * h + hi) * p..][..p];
            for (pi, srow) in s.chunks_mut(n).enumerate() {
                let xv = x[pi];
                srow.iter_mut()
                    .zip(&db)
                    .for_each(|(sv, &dbv)| *sv = *sv * da + dbv * xv);
                y[ti * p + pi] = dot(srow, c) + dskip * xv;
            }
        }
        (y, s)
    };
    Ok(per_head(
        dims,
        t.saturating_mul(h).saturating_mul(p).saturating_mul(n),
        head,
    ))
}

/// The chunked SSD algorithm (mamba's `ssd_minimal`, HF `mamba2_chunk_scan`), same result as
/// [`ssd_recurrent`]. Returns `(y [T, H, P], final_state [H, P, N])`.
///
/// Per chunk of `chunk_size` tokens (the last may be shorter), with `a_i = dt_i * A` and `cs` its
/// running sum within the chunk:
/// - intra-chunk: `y_i += sum_{j<=i} (C_i . B_j) * exp(sum_{k=j+1..i} a_k) * dt_j x_j`;
/// - from the carried state: `y_i += exp(cs_i) * S_in C_i`;
/// - state passing: `S_out = exp(cs_last) S_in + sum_j exp(cs_last - cs_j) dt_j x_j (outer) B_j`.
///
/// Segment sums are accumulated term by term (never as a difference of two cumsums) and every
/// decay exponent is clamped at 0, so rounding cannot turn a decay into growth.
pub fn ssd_chunked(
    inp: &SsdInputs,
    dims: SsdDims,
    chunk_size: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    const OP: &str = "ssd_chunked";
    check_nonzero(OP, &[("chunk_size", chunk_size)])?;
    validate(OP, inp, dims)?;
    let SsdDims {
        seqlen: t,
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
    } = dims;
    let hpg = h / g;
    let q = chunk_size.min(t);
    let n_chunks = t.div_ceil(q);
    // C_i . B_j depends only on the group, not the head: compute it once per (group, chunk) and
    // share it across the H/G heads of the group. Lower triangle of a `len x len` matrix.
    let cb_item = |idx: usize| {
        let (gi, ci) = (idx / n_chunks, idx % n_chunks);
        let start = ci * q;
        let len = q.min(t - start);
        let mut m = vec![0f32; len * len];
        for i in 0..len {
            let cv = &inp.c[((start + i) * g + gi) * n..][..n];
            for j in 0..=i {
                m[i * len + j] = dot(cv, &inp.b[((start + j) * g + gi) * n..][..n]);
            }
        }
        m
    };
    let cb_work = t.saturating_mul(q).saturating_mul(n).saturating_mul(g);
    let cb: Vec<Vec<f32>> = if cb_work >= PAR_MIN_WORK {
        (0..g * n_chunks).into_par_iter().map(cb_item).collect()
    } else {
        (0..g * n_chunks).map(cb_item).collect()
    };
    let head = |hi: usize| {
        let gi = hi / hpg;
        let a = -inp.a_log[hi].exp();
        let dskip = inp.d.map_or(0.0, |d| d[hi]);
        let mut s = match inp.initial_state {
            Some(s0) => s0[hi * p * n..][..p * n].to_vec(),
            None => vec![0f32; p * n],
        };
        let mut y = vec![0f32; t * p];
        // Per-chunk scratch, contiguous per token so the inner loops vectorise.
        let mut xdt = vec![0f32; q * p];
        let mut bc = vec![0f32; q * n];
        let mut cc = vec![0f32; q * n];
        let mut da = vec![0f32; q];
        let mut cs = vec![0f32; q];
        let mut s_next = vec![0f32; p * n];
        let mut start = 0;
        while start < t {
            let len = q.min(t - start);
            let cbm = &cb[gi * n_chunks + start / q];
            let mut run = 0f32;
            for j in 0..len {
                let ti = start + j;
                let dt = dt_value(inp.dt[ti * h + hi], inp.dt_bias[hi], inp.dt_limit);
                da[j] = dt * a;
                run += da[j];
                cs[j] = run;
                let x = &inp.x[(ti * h + hi) * p..][..p];
                xdt[j * p..][..p]
                    .iter_mut()
                    .zip(x)
                    .for_each(|(o, &xv)| *o = xv * dt);
                bc[j * n..][..n].copy_from_slice(&inp.b[(ti * g + gi) * n..][..n]);
                cc[j * n..][..n].copy_from_slice(&inp.c[(ti * g + gi) * n..][..n]);
            }
            for i in 0..len {
                let ci = &cc[i * n..][..n];
                let yi = &mut y[(start + i) * p..][..p];
                // Carried state: exp(cs_i) * S_in C_i.
                let decay_in = cs[i].min(0.0).exp();
                for (pi, yv) in yi.iter_mut().enumerate() {
                    *yv = decay_in * dot(&s[pi * n..][..n], ci);
                }
                // Intra-chunk, j = i down to 0, growing the segment sum one term at a time.
                let mut seg = 0f32;
                for j in (0..=i).rev() {
                    if j < i {
                        seg += da[j + 1];
                    }
                    let m = cbm[i * len + j] * seg.min(0.0).exp();
                    yi.iter_mut()
                        .zip(&xdt[j * p..][..p])
                        .for_each(|(yv, &xv)| *yv += m * xv);
                }
                if dskip != 0.0 {
                    let x = &inp.x[((start + i) * h + hi) * p..][..p];
                    yi.iter_mut().zip(x).for_each(|(yv, &xv)| *yv += dskip * xv);
                }
            }
            // State passing to the next chunk.
            let last = cs[len - 1];
            let decay_all = last.min(0.0).exp();
            s_next
                .iter_mut()
                .zip(&s)
                .for_each(|(o, &sv)| *o = decay_all * sv);
            // Decay from token j to the chunk end, as a suffix sum of a (j+1..len).
            let mut suffix = 0f32;
            for j in (0..len).rev() {
                if j + 1 < len {
                    suffix += da[j + 1];
                }
                let w = suffix.min(0.0).exp();
                let bj = &bc[j * n..][..n];
                for pi in 0..p {
                    let coef = w * xdt[j * p + pi];
                    s_next[pi * n..][..n]
                        .iter_mut()
                        .zip(bj)
                        .for_each(|(o, &bv)| *o += coef * bv);
                }
            }
            std::mem::swap(&mut s, &mut s_next);
            start += len;
        }
        (y, s)
    };
    let work = t
        .saturating_mul(h)
        .saturating_mul(p + n)
        .saturating_mul(q.max(n));
    Ok(per_head(dims, work, head))
}

/// One decode step of the SSM for a batch of sequences (HF `mamba2_selective_state_update`).
///
/// `state [B, H, P, N]` updated in place; `x [B, H, P]`; `dt [B, H]` raw (softplus + bias + clamp
/// applied here); `dt_bias, a_log [H]`; `b, c [B, G, N]`; `d [H]` optional skip; `z [B, H, P]`
/// optional gate (`y *= silu(z)`). Returns `y [B, H, P]`.
#[allow(clippy::too_many_arguments)]
pub fn ssm_state_update(
    state: &mut [f32],
    x: &[f32],
    dt: &[f32],
    dt_bias: &[f32],
    a_log: &[f32],
    b: &[f32],
    c: &[f32],
    d: Option<&[f32]>,
    z: Option<&[f32]>,
    dt_limit: (f32, f32),
    dims: SsmUpdateDims,
) -> Result<Vec<f32>> {
    const OP: &str = "ssm_state_update";
    let SsmUpdateDims {
        batch: bs,
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
    } = dims;
    check_nonzero(OP, &[("B", bs), ("H", h), ("P", p), ("G", g), ("N", n)])?;
    check_divides(OP, ("H", h), ("G", g))?;
    check_dt_limit(OP, dt_limit)?;
    check_len(
        OP,
        "state",
        state.len(),
        &[("B", bs), ("H", h), ("P", p), ("N", n)],
    )?;
    check_len(OP, "x", x.len(), &[("B", bs), ("H", h), ("P", p)])?;
    check_len(OP, "dt", dt.len(), &[("B", bs), ("H", h)])?;
    check_len(OP, "dt_bias", dt_bias.len(), &[("H", h)])?;
    check_len(OP, "a_log", a_log.len(), &[("H", h)])?;
    check_len(OP, "b", b.len(), &[("B", bs), ("G", g), ("N", n)])?;
    check_len(OP, "c", c.len(), &[("B", bs), ("G", g), ("N", n)])?;
    if let Some(d) = d {
        check_len(OP, "d", d.len(), &[("H", h)])?;
    }
    if let Some(z) = z {
        check_len(OP, "z", z.len(), &[("B", bs), ("H", h), ("P", p)])?;
    }
    let hpg = h / g;
    let mut y = vec![0f32; bs * h * p];
    // One item per (sequence, head): its own P x N state block and P outputs.
    let step = |(idx, (s, yo)): (usize, (&mut [f32], &mut [f32]))| {
        let (bi, hi) = (idx / h, idx % h);
        let gi = hi / hpg;
        let dtv = dt_value(dt[idx], dt_bias[hi], dt_limit);
        let da = (dtv * -a_log[hi].exp()).exp();
        let bv = &b[(bi * g + gi) * n..][..n];
        let cv = &c[(bi * g + gi) * n..][..n];
        let xv = &x[idx * p..][..p];
        let dskip = d.map_or(0.0, |d| d[hi]);
        for (pi, srow) in s.chunks_mut(n).enumerate() {
            let xp = xv[pi];
            srow.iter_mut()
                .zip(bv)
                .for_each(|(sv, &bb)| *sv = *sv * da + (dtv * bb) * xp);
            let mut out = dot(srow, cv) + dskip * xp;
            if let Some(z) = z {
                out *= silu(z[idx * p + pi]);
            }
            yo[pi] = out;
        }
    };
    if state.len() >= PAR_MIN_WORK {
        state
            .par_chunks_mut(p * n)
            .zip(y.par_chunks_mut(p))
            .enumerate()
            .for_each(step);
    } else {
        state
            .chunks_mut(p * n)
            .zip(y.chunks_mut(p))
            .enumerate()
            .for_each(step);
    }
    Ok(y)
}
