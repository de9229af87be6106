//! Helpers shared by the GPU tests (tests/cuda_*.rs): the device, dtype conversion, and a
//! comparison that prints rel L2, the worst element and the NaN count.

use falcon_h1_kernels::cuda::{Gpu, GpuDtype};
use falcon_h1_kernels::tensor::rel_l2;

/// Device 0; the GPU tests fail, saying so, where there is no GPU or driver.
pub fn gpu() -> Gpu {
    Gpu::new(0).unwrap_or_else(|e| {
        panic!("the tests/cuda_*.rs tests need a CUDA GPU and its driver, and found none: {e}")
    })
}

/// Values converted to the kernel dtype.
pub fn to_t<T: GpuDtype>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// Kernel-dtype values back to f32.
pub fn to_f32<T: GpuDtype>(v: &[T]) -> Vec<f32> {
    v.iter().map(|&x| x.to_f32()).collect()
}

/// Compares `got` with `want [rows, cols]`, prints max / mean error, the worst element and the
/// NaN count, and fails on any NaN or a relative L2 error of `tol` or more.
pub fn compare(what: &str, got: &[f32], want: &[f32], cols: usize, tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let nans = got.iter().filter(|v| !v.is_finite()).count();
    let (mut worst, mut at, mut sum) = (0f64, 0usize, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        sum += d;
        if d > worst || d.is_nan() {
            (worst, at) = (d, i);
        }
    }
    let e = rel_l2(got, want);
    println!(
        "{what}: rel L2 {e:.2e}, max abs {worst:.2e} at [{}, {}] (got {}, want {}), mean abs {:.2e}, \
         non-finite {nans}",
        at / cols,
        at % cols,
        got[at],
        want[at],
        sum / got.len() as f64
    );
    assert_eq!(nans, 0, "{what}: {nans} non-finite outputs");
    assert!(
        e < tol,
        "{what}: rel L2 {e:.3e} >= {tol:.0e}; worst at [{}, {}]: got {}, want {}",
        at / cols,
        at % cols,
        got[at],
        want[at]
    );
}
