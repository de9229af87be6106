//! A plain host tensor: row-major f32 data and its shape. This is what the weight loader produces
//! and what the CPU backend computes on; device backends upload from it.

use crate::error::{Error, Result};

/// A dense row-major f32 tensor on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Sizes, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Wraps `data` as a tensor of `shape`; errors when the element counts differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::invalid(format!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Multiplies every element by `s` in place.
    pub fn scale(&mut self, s: f32) {
        self.data.iter_mut().for_each(|v| *v *= s);
    }
}

/// Relative L2 error `||a - b|| / ||b||` (b is the reference), in f64. Returns infinity when the
/// lengths differ or either side holds a NaN, so that a NaN never passes a tolerance check.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let mut num = 0f64;
    let mut den = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        if x.is_nan() || y.is_nan() {
            return f64::INFINITY;
        }
        let d = x as f64 - y as f64;
        num += d * d;
        den += (y as f64) * (y as f64);
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}

/// Largest absolute difference and the index where it occurs.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    let mut best = (0f32, 0usize);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d.is_nan() || d > best.0 {
            best = (if d.is_nan() { f32::NAN } else { d }, i);
            if d.is_nan() {
                break;
            }
        }
    }
    best
}

/// `n` values drawn uniformly from `[lo, hi)`, deterministic in `seed` (independent streams per
/// block of 64K values, so that big tensors fill in parallel).
pub fn uniform_values(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use rayon::prelude::*;
    const BLOCK: usize = 1 << 16;
    (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .flat_map_iter(|blk| {
            let mut rng = StdRng::seed_from_u64(seed ^ ((blk as u64) << 20));
            let len = (n - blk * BLOCK).min(BLOCK);
            (0..len)
                .map(|_| {
                    if hi > lo {
                        rng.random_range(lo..hi)
                    } else {
                        lo
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
