//! The gated group RMSNorm kernel against `cpu::gated_rms_norm` (both gate orders, G = 1 and 2)
//! and the plain gate against `cpu::silu_gate`, in f32, bf16 and f16, with y and z read as column
//! slices of one wider buffer. Built only with `--features cuda` and meant for a GPU machine:
//! without a GPU every test here fails, saying so. Outputs are poisoned with NaN first.

use crate::common;

use common::gpu_check::{compare, gpu, to_f32, to_t};

use falcon_h1_kernels::cpu;
use falcon_h1_kernels::cuda::conv1d::Strided;
use falcon_h1_kernels::cuda::{Gpu, GpuDtype};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EPS: f32 = 1e-6;

fn draw<T: GpuDtype>(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| T::from_f32(rng.random_range(lo..hi)).to_f32())
        .collect()
}

/// `[rows, Ds]` y and z as columns of one `[rows, 2 Ds + pad]` buffer (z first, as the input
/// projection lays them out; an odd `pad` forces the element-by-element path).
#[allow(clippy::too_many_arguments)]
fn case<T: GpuDtype>(
    g: &Gpu,
    rows: usize,
    ds: usize,
    groups: usize,
    norm: bool,
    norm_before_gate: bool,
    pad: usize,
    tol: f64,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let width = 2 * ds + pad;
    let buf = draw::<T>(&mut rng, rows * width, -3.0, 3.0);
    let w = draw::<T>(&mut rng, ds, 0.5, 1.5);
    let z: Vec<f32> = (0..rows)
        .flat_map(|r| buf[r * width..][..ds].to_vec())
        .collect();
    let y: Vec<f32> = (0..rows)
        .flat_map(|r| buf[r * width + ds..][..ds].to_vec())
        .collect();
    let want = if norm {
        cpu::gated_rms_norm(&y, &z, &w, groups, EPS, norm_before_gate).unwrap()
    } else {
        cpu::silu_gate(&y, &z).unwrap()
    };
    let dbuf = g.upload(&to_t::<T>(&buf)).unwrap();
    let dw = g.upload(&to_t::<T>(&w)).unwrap();
    let mut dout = g.upload(&vec![T::from_f32(f32::NAN); rows * ds]).unwrap();
    let col = |offset| Strided {
        buf: &dbuf,
        offset,
        row_stride: width,
    };
    g.gated_rms_norm_into(
        col(ds),
        Some(col(0)),
        norm.then_some(&dw),
        &mut dout,
        rows,
        ds,
        groups,
        EPS,
        norm_before_gate,
    )
    .unwrap();
    g.synchronize().unwrap();
    let what = format!(
        "gated_norm_{} [{rows}, {ds}] G {groups} norm {norm} before_gate {norm_before_gate} pad {pad}",
        T::SUFFIX
    );
    compare(&what, &to_f32(&g.download(&dout).unwrap()), &want, ds, tol);
}

fn sweep<T: GpuDtype>(tol: f64) {
    let g = gpu();
    let mut seed = 0;
    for &rows in &[1usize, 3, 1000] {
        for &ds in &[128usize, 1000, 3072, 4096] {
            for groups in [1, 2] {
                for (norm, nbg) in [(true, false), (true, true), (false, false)] {
                    for pad in [0, 8, 3] {
                        if rows == 1000 && pad == 8 {
                            continue;
                        }
                        seed += 1;
                        case::<T>(&g, rows, ds, groups, norm, nbg, pad, tol, seed);
                    }
                }
            }
        }
    }
}

#[test]
fn gated_norm_f32_matches_cpu() {
    sweep::<f32>(1e-5);
}

#[test]
fn gated_norm_bf16_matches_cpu() {
    sweep::<half::bf16>(1e-2);
}

#[test]
fn gated_norm_f16_matches_cpu() {
    sweep::<half::f16>(2e-3);
}

#[test]
fn gated_norm_rejects_bad_shapes() {
    let g = gpu();
    let y = g.upload(&[0f32; 24]).unwrap();
    let w = g.upload(&[1f32; 6]).unwrap();
    let mut out = g.upload(&[0f32; 24]).unwrap();
    let err = |e: falcon_h1_kernels::Result<()>| e.unwrap_err().to_string();
    let ys = Strided::dense(&y, 6);
    let e = err(g.gated_rms_norm_into(ys, None, Some(&w), &mut out, 4, 6, 4, EPS, false));
    assert!(e.contains("multiple of groups"), "{e}");
    let e = err(g.gated_rms_norm_into(ys, None, Some(&w), &mut out, 5, 6, 1, EPS, false));
    assert!(e.contains("`y`"), "{e}");
    let e = err(g.gated_rms_norm_into(ys, None, Some(&w), &mut out, 3, 8, 1, EPS, false));
    assert!(e.contains("`weight`") || e.contains("`y`"), "{e}");
    let e = err(g.gated_rms_norm_into(ys, None, Some(&w), &mut out, 4, 6, 1, -1.0, false));
    assert!(e.contains("eps"), "{e}");
}
