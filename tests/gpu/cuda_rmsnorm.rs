//! The first CUDA kernel, RMSNorm (optionally with the fused residual add), against the CPU
//! reference on awkward sizes in f32, bf16 and f16. Built only with `--features cuda` and meant
//! for a GPU machine: where there is no GPU or driver every test here fails, saying so.
//! Outputs are poisoned with NaN before each launch, so an element the kernel skips is caught.

use crate::common;

use common::gpu_check::{compare, gpu, to_f32, to_t};

use falcon_h1_kernels::cpu;
use falcon_h1_kernels::cuda::{Gpu, GpuDtype};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: [usize; 3] = [1, 3, 129];
/// Odd widths take the kernel's scalar path, the others its 16-byte path; 12289 is wider than
/// one pass of the largest block.
const COLS: [usize; 7] = [1, 7, 64, 1000, 3072, 5120, 12289];
const EPS: f32 = 1e-5;

/// Draws values, rounded to `T` so that the CPU reference sees exactly what the kernel sees.
fn draw<T: GpuDtype>(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| T::from_f32(rng.random_range(-scale..scale)).to_f32())
        .collect()
}

fn check<T: GpuDtype>(g: &Gpu, rows: usize, cols: usize, with_residual: bool, tol: f64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    // Falcon-H1's residual stream is large (row norms in the hundreds): draw a wide range.
    let x = draw::<T>(&mut rng, rows * cols, 30.0);
    let w = draw::<T>(&mut rng, cols, 2.0);
    let r0 = draw::<T>(&mut rng, rows * cols, 30.0);

    let mut want_res = r0.clone();
    let want = if with_residual {
        cpu::add_rms_norm(&mut want_res, &x, &w, EPS).unwrap()
    } else {
        cpu::rms_norm(&x, &w, EPS).unwrap()
    };

    let dx = g.upload(&to_t::<T>(&x)).unwrap();
    let dw = g.upload(&to_t::<T>(&w)).unwrap();
    let mut dres = g.upload(&to_t::<T>(&r0)).unwrap();
    let mut dout = g.upload(&vec![T::from_f32(f32::NAN); rows * cols]).unwrap();
    g.rms_norm_into(
        &dx,
        &dw,
        with_residual.then_some(&mut dres),
        &mut dout,
        rows,
        cols,
        EPS,
    )
    .unwrap();
    g.synchronize().unwrap();
    let what = format!(
        "rms_norm_{} [{rows}, {cols}]{}",
        T::SUFFIX,
        if with_residual { " + residual" } else { "" }
    );
    compare(
        &what,
        &to_f32(&g.download(&dout).unwrap()),
        &want,
        cols,
        tol,
    );
    // The residual buffer is the sum when fused, and untouched otherwise.
    let res = to_f32(&g.download(&dres).unwrap());
    if with_residual {
        compare(&format!("{what}: residual sum"), &res, &want_res, cols, tol);
    } else {
        assert_eq!(res, r0, "{what}: residual changed without the fused add");
    }
}

fn sweep<T: GpuDtype>(tol: f64) {
    let g = gpu();
    let mut seed = 0;
    for &rows in &ROWS {
        for &cols in &COLS {
            for with_residual in [false, true] {
                seed += 1;
                check::<T>(&g, rows, cols, with_residual, tol, seed);
            }
        }
    }
}

#[test]
fn rms_norm_f32_matches_cpu() {
    sweep::<f32>(1e-5);
}

#[test]
fn rms_norm_bf16_matches_cpu() {
    sweep::<half::bf16>(1e-2);
}

#[test]
fn rms_norm_f16_matches_cpu() {
    // f16 has 3 more mantissa bits than bf16; its values here stay far from its range limits.
    sweep::<half::f16>(2e-3);
}

/// The allocating launcher gives the same result as the one writing into a buffer.
#[test]
fn rms_norm_allocating_matches_into() {
    let g = gpu();
    let (rows, cols) = (5, 3072);
    let mut rng = StdRng::seed_from_u64(7);
    let x = draw::<half::bf16>(&mut rng, rows * cols, 30.0);
    let w = draw::<half::bf16>(&mut rng, cols, 2.0);
    let dx = g.upload(&to_t::<half::bf16>(&x)).unwrap();
    let dw = g.upload(&to_t::<half::bf16>(&w)).unwrap();
    let a = g.rms_norm(&dx, &dw, None, rows, cols, EPS).unwrap();
    let mut b = g.upload(&vec![half::bf16::NAN; rows * cols]).unwrap();
    g.rms_norm_into(&dx, &dw, None, &mut b, rows, cols, EPS)
        .unwrap();
    assert_eq!(
        to_f32(&g.download(&a).unwrap()),
        to_f32(&g.download(&b).unwrap())
    );
}

#[test]
fn rms_norm_rejects_bad_shapes() {
    let g = gpu();
    let x = g.upload(&[1f32; 12]).unwrap();
    let w = g.upload(&[1f32; 4]).unwrap();
    let mut out = g.upload(&[0f32; 12]).unwrap();
    let mut res = g.upload(&[0f32; 8]).unwrap();
    let err = |r: falcon_h1_kernels::Result<()>| r.unwrap_err().to_string();

    let e = err(g.rms_norm_into(&x, &w, None, &mut out, 4, 4, EPS));
    assert!(
        e.contains("`x` has 12") && e.contains("rows=4, cols=4"),
        "{e}"
    );
    let e = err(g.rms_norm_into(&x, &w, None, &mut out, 2, 6, EPS));
    assert!(e.contains("`weight` has 4") && e.contains("cols=6"), "{e}");
    let e = err(g.rms_norm_into(&x, &w, Some(&mut res), &mut out, 3, 4, EPS));
    assert!(e.contains("`residual` has 8"), "{e}");
    let e = err(g.rms_norm_into(&x, &w, None, &mut out, 0, 4, EPS));
    assert!(e.contains("empty"), "{e}");
    let e = err(g.rms_norm_into(&x, &w, None, &mut out, 3, 4, f32::NAN));
    assert!(e.contains("eps"), "{e}");
    let e = g.rms_norm(&x, &w, None, 6, 2, EPS).unwrap_err().to_string();
    assert!(e.contains("`weight`"), "{e}");
}
