//! The SwiGLU feed-forward block.

use super::{check_len, linear, silu};
use crate::error::Result;

/// `up * silu(gate)`, both `[n]` (any shape, same length). Returns `[n]`.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
    check_len(
        "swiglu",
        "up",
        up.len(),
        &[("n (length of gate)", gate.len())],
    )?;
    Ok(gate.iter().zip(up).map(|(&g, &u)| u * silu(g)).collect())
}

/// Falcon-H1 MLP: `down(up(x) * silu(gate(x) * m0)) * m1` with `multipliers = [m0, m1]`.
///
/// `x [rows, d]`, `w_gate, w_up [inter, d]`, `w_down [d, inter]`. Returns `[rows, d]`. Pass
/// `[1.0, 1.0]` when the multipliers are folded into the weights.
#[allow(clippy::too_many_arguments)]
pub fn mlp(
    x: &[f32],
    w_gate: &[f32],
    w_up: &[f32],
    w_down: &[f32],
    rows: usize,
    d: usize,
    inter: usize,
    multipliers: [f32; 2],
) -> Result<Vec<f32>> {
    const OP: &str = "mlp";
    check_len(OP, "w_gate", w_gate.len(), &[("inter", inter), ("d", d)])?;
    check_len(OP, "w_up", w_up.len(), &[("inter", inter), ("d", d)])?;
    check_len(OP, "w_down", w_down.len(), &[("d", d), ("inter", inter)])?;
    let gate = linear(x, w_gate, rows, d, inter)?;
    let mut hidden = linear(x, w_up, rows, d, inter)?;
    let [m0, m1] = multipliers;
    hidden
        .iter_mut()
        .zip(&gate)
        .for_each(|(u, &g)| *u *= silu(g * m0));
    let mut out = linear(&hidden, w_down, rows, inter, d)?;
    if m1 != 1.0 {
        out.iter_mut().for_each(|v| *v *= m1);
    }
    Ok(out)
}
