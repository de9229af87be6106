//! Rotary position embedding, NeoX rotate-half style, matching HF's f32 arithmetic.

use super::{check_len, check_nonzero, PAR_MIN_WORK};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Inverse frequencies `[head_dim / 2]`: `1 / theta^(2i / head_dim)`, as HF computes them in f32.
///
/// HF evaluates `base ** (arange(0, hd, 2, f32) / hd)` in f32, so the exponent is an f32 quotient
/// and the base is rounded to f32 (1e11 becomes 99999997952). The power is taken in f64 from those
/// f32 values and rounded once, which is at least as accurate as torch's f32 `pow`.
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    let base = theta as f32 as f64;
    (0..head_dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / head_dim as f32;
            1.0f32 / (base.powf(e as f64) as f32)
        })
        .collect()
}

/// Rotates `x [T, n_heads, head_dim]` in place for `positions [T]`.
///
/// `x' = x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x2, x1)` over the full head
/// dim; the angle of pair `i` is `(pos as f32) * inv_freq[i]` in f32 like HF, and its cos/sin are
/// evaluated in f64 from that f32 angle and rounded. `head_dim` must be even.
pub fn rope_neox(
    x: &mut [f32],
    positions: &[usize],
    n_heads: usize,
    head_dim: usize,
    theta: f64,
) -> Result<()> {
    const OP: &str = "rope_neox";
    check_nonzero(
        OP,
        &[
            ("T", positions.len()),
            ("n_heads", n_heads),
            ("head_dim", head_dim),
        ],
    )?;
    if head_dim % 2 != 0 {
        return Err(Error::invalid(format!(
            "{OP}: head_dim={head_dim} must be even"
        )));
    }
    check_len(
        OP,
        "x",
        x.len(),
        &[
            ("T", positions.len()),
            ("n_heads", n_heads),
            ("head_dim", head_dim),
        ],
    )?;
    let half = head_dim / 2;
    let inv_freq = rope_inv_freq(head_dim, theta);
    let row = n_heads * head_dim;
    let apply = |(t, xr): (usize, &mut [f32])| {
        let pos = positions[t] as f32;
        let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq
            .iter()
            .map(|&f| {
                let a = (pos * f) as f64;
                (a.cos() as f32, a.sin() as f32)
            })
            .unzip();
        for head in xr.chunks_mut(head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * cos[i] + (-b) * sin[i];
                x2[i] = b * cos[i] + a * sin[i];
            }
        }
    };
    if x.len() >= PAR_MIN_WORK {
        x.par_chunks_mut(row).enumerate().for_each(apply);
    } else {
        x.chunks_mut(row).enumerate().for_each(apply);
    }
    Ok(())
}
