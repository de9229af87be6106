//! Token embedding lookup and the output projection.

use super::{check_len, check_nonzero, linear};
use crate::error::{Error, Result};

/// Looks up `ids [T]` in `table [V, dim]` and scales by `multiplier`. Returns `[T, dim]`.
///
/// An id `>= V` is an error naming the id, its position and the vocab size.
pub fn embedding(ids: &[u32], table: &[f32], dim: usize, multiplier: f32) -> Result<Vec<f32>> {
    const OP: &str = "embedding";
    check_nonzero(OP, &[("dim", dim), ("T (number of ids)", ids.len())])?;
    if table.is_empty() || table.len() % dim != 0 {
        return Err(Error::invalid(format!(
            "{OP}: `table` has {} values, expected a non-empty [V, dim={dim}]",
            table.len()
        )));
    }
    let vocab = table.len() / dim;
    let mut out = Vec::with_capacity(ids.len() * dim);
    for (pos, &id) in ids.iter().enumerate() {
        let i = id as usize;
        if i >= vocab {
            return Err(Error::invalid(format!(
                "{OP}: token id {id} at position {pos} is out of range for vocab size {vocab}"
            )));
        }
        out.extend(
            table[i * dim..(i + 1) * dim]
                .iter()
                .map(|&v| v * multiplier),
        );
    }
    Ok(out)
}

/// Logits: `x [rows, dim] · w[vocab, dim]^T * multiplier`. Returns `[rows, vocab]`.
pub fn lm_head(
    x: &[f32],
    w: &[f32],
    rows: usize,
    dim: usize,
    vocab: usize,
    multiplier: f32,
) -> Result<Vec<f32>> {
    const OP: &str = "lm_head";
    check_nonzero(OP, &[("rows", rows), ("dim", dim), ("vocab", vocab)])?;
    check_len(OP, "x", x.len(), &[("rows", rows), ("dim", dim)])?;
    check_len(OP, "w", w.len(), &[("vocab", vocab), ("dim", dim)])?;
    let mut y = linear(x, w, rows, dim, vocab)?;
    if multiplier != 1.0 {
        y.iter_mut().for_each(|v| *v *= multiplier);
    }
    Ok(y)
}
