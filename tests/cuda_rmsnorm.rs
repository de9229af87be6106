//! The first CUDA kernel, RMSNorm (optionally with the fused residual add), against the CPU
//! reference on awkward sizes, f32 / bf16 / f16. Built only with `--features cuda`; needs a GPU
//! (it fails, saying so, where there is none). Outputs are poisoned with NaN before each launch.

#![cfg(feature = "cuda")]

use falcon_h1_kernels::cpu;
use falcon_h1_kernels::cuda::{Gpu, GpuDtype};
use falcon_h1_kernels::tensor::{max_abs_diff, rel_l2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn gpu() -> Gpu {
    Gpu::new(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"))
}

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Values as the kernel sees them: rounded to T.
fn round<T: GpuDtype>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

fn back<T: GpuDtype>(v: &[T]) -> Vec<f32> {
    v.iter().map(|&x| x.to_f32()).collect()
}

fn check<T: GpuDtype>(g: &Gpu, rows: usize, cols: usize, with_residual: bool, tol: f64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    // Falcon-H1 activations are large (norms near 900): draw a wide range.
    let x = back(&round::<T>(&rand_vec(&mut rng, rows * cols, 30.0)));
    let w = back(&round::<T>(&rand_vec(&mut rng, cols, 2.0)));
    let r0 = back(&round::<T>(&rand_vec(&mut rng, rows * cols, 30.0)));
    let eps = 1e-5;

    let (want, want_res) = if with_residual {
        let mut r = r0.clone();
        let y = cpu::add_rms_norm(&mut r, &x, &w, eps).unwrap();
        (y, Some(r))
    } else {
        (cpu::rms_norm(&x, &w, eps).unwrap(), None)
    };

    let dx = g.upload(&round::<T>(&x)).unwrap();
    let dw = g.upload(&round::<T>(&w)).unwrap();
    let mut dout = g.upload(&vec![T::from_f32(f32::NAN); rows * cols]).unwrap();
    let mut dres = g.upload(&round::<T>(&r0)).unwrap();
    g.rms_norm(
        &dx,
        &dw,
        with_residual.then_some(&mut dres),
        &mut dout,
        rows,
        cols,
        eps,
    )
    .unwrap();
    let got = back(&g.download(&dout).unwrap());
    let nans = got.iter().filter(|v| v.is_nan()).count();
    let e = rel_l2(&got, &want);
    let (m, at) = max_abs_diff(&got, &want);
    println!(
        "rms_norm_{} rows {rows} cols {cols} residual {with_residual}: rel L2 {e:.3e}, max abs {m:.3e} at {at}, NaN {nans}",
        T::SUFFIX
    );
    assert_eq!(nans, 0);
    assert!(e < tol, "rel L2 {e:.3e} >= {tol:.0e}");
    if let Some(wr) = want_res {
        let gr = back(&g.download(&dres).unwrap());
        let e = rel_l2(&gr, &wr);
        assert!(e < tol, "residual sum: rel L2 {e:.3e}");
    }
}

const SIZES: [(usize, usize); 8] = [
    (1, 1),
    (1, 7),
    (3, 64),
    (129, 1000),
    (3, 1024),
    (17, 3072),
    (5, 5120),
    (2, 12289),
];

#[test]
fn rms_norm_f32_matches_cpu() {
    let g = gpu();
    for (i, &(r, c)) in SIZES.iter().enumerate() {
        check::<f32>(&g, r, c, false, 1e-5, i as u64);
        check::<f32>(&g, r, c, true, 1e-5, 100 + i as u64);
    }
}

#[test]
fn rms_norm_bf16_matches_cpu() {
    let g = gpu();
    for (i, &(r, c)) in SIZES.iter().enumerate() {
        check::<half::bf16>(&g, r, c, false, 1e-2, i as u64);
        check::<half::bf16>(&g, r, c, true, 1e-2, 200 + i as u64);
    }
}

#[test]
fn rms_norm_f16_matches_cpu() {
    let g = gpu();
    for (i, &(r, c)) in SIZES.iter().enumerate() {
        check::<half::f16>(&g, r, c, false, 1e-2, i as u64);
        check::<half::f16>(&g, r, c, true, 1e-2, 300 + i as u64);
    }
}

#[test]
fn rms_norm_rejects_bad_shapes() {
    let g = gpu();
    let x = g.upload(&[1f32; 12]).unwrap();
    let w = g.upload(&[1f32; 4]).unwrap();
    let mut out = g.upload(&[0f32; 12]).unwrap();
    let e = g
        .rms_norm(&x, &w, None, &mut out, 4, 4, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`x`") && e.contains("[4, 4]"), "{e}");
    let e = g
        .rms_norm(&x, &w, None, &mut out, 2, 6, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`weight`") && e.contains("[6]"), "{e}");
}
