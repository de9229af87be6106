//! The one-token SSM state update kernels against `cpu::ssm_state_update` (and several steps
//! against `cpu::ssd_recurrent`), f32 and bf16 state, f32/bf16/f16 inputs. Built only with
//! `--features cuda` and meant for a GPU machine: without a GPU every test here fails, saying so.
//! Outputs are poisoned with NaN before each launch; unused state slots must stay untouched.

use crate::common;

use common::gpu_check::{compare, gpu, to_f32, to_t};

use falcon_h1_kernels::cpu::{self, SsdDims, SsdInputs, SsmUpdateDims};
use falcon_h1_kernels::cuda::conv1d::Strided;
use falcon_h1_kernels::cuda::ssm_update::{SsmStateDtype, SsmUpdateCudaDims, SsmUpdateInputs};
use falcon_h1_kernels::cuda::{Gpu, GpuDtype};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn round<T: GpuDtype>(v: f32) -> f32 {
    T::from_f32(v).to_f32()
}

fn uniform<T: GpuDtype>(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| round::<T>(rng.random_range(lo..hi)))
        .collect()
}

/// Standard normal draws (Box-Muller), shifted by `mean`, rounded to `T`.
fn normal<T: GpuDtype>(rng: &mut StdRng, n: usize, mean: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random_range(1e-7..1.0);
            let u2: f32 = rng.random_range(0.0..1.0);
            round::<T>(mean + (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos())
        })
        .collect()
}

/// One model's parameters and one token's projection row per sequence, laid out as the input
/// projection does: columns z | x | B | C | dt (plus padding) of one `[batch, width]` buffer.
struct Case {
    dims: SsmUpdateCudaDims,
    width: usize,
    proj: Vec<f32>,
    dt_bias: Vec<f32>,
    a_log: Vec<f32>,
    d: Vec<f32>,
}

impl Case {
    fn new<T: GpuDtype>(rng: &mut StdRng, dims: SsmUpdateCudaDims) -> Case {
        let SsmUpdateCudaDims {
            batch,
            heads: h,
            head_dim: p,
            groups: g,
            state: n,
        } = dims;
        let width = 2 * h * p + 2 * g * n + h + 8;
        let mut proj = Vec::with_capacity(batch * width);
        for _ in 0..batch {
            proj.extend(uniform::<T>(rng, h * p, -3.0, 3.0)); // z
            proj.extend(uniform::<T>(rng, h * p, -1.0, 1.0)); // x
            proj.extend(uniform::<T>(rng, 2 * g * n, -1.0, 1.0)); // B, C
            proj.extend(normal::<T>(rng, h, -4.0)); // raw dt ~ randn - 4
            proj.extend(uniform::<T>(rng, 8, -1.0, 1.0)); // padding
        }
        Case {
            dims,
            width,
            proj,
            dt_bias: uniform::<T>(rng, h, -0.5, 0.5),
            a_log: uniform::<T>(rng, h, -1.0, 1.5),
            d: uniform::<T>(rng, h, -1.0, 1.0),
        }
    }

    /// Column offsets of z, x, B, C, dt within a row.
    fn cols(&self) -> [usize; 5] {
        let SsmUpdateCudaDims {
            heads: h,
            head_dim: p,
            groups: g,
            state: n,
            ..
        } = self.dims;
        [
            0,
            h * p,
            2 * h * p,
            2 * h * p + g * n,
            2 * h * p + 2 * g * n,
        ]
    }

    /// Columns `[off, off + len)` of every row.
    fn gather(&self, off: usize, len: usize) -> Vec<f32> {
        (0..self.dims.batch)
            .flat_map(|b| self.proj[b * self.width + off..][..len].to_vec())
            .collect()
    }
}

/// One update over `slots = batch + 2` slots (sequence b -> slot (2b + 1) % slots) against the
/// CPU, whose state is rounded to `S` after the step (exact for f32).
#[allow(clippy::too_many_arguments)]
fn update_case<T: GpuDtype, S: SsmStateDtype>(
    g: &Gpu,
    dims: SsmUpdateCudaDims,
    with_d: bool,
    with_z: bool,
    dt_limit: (f32, f32),
    tol_y: f64,
    tol_state: f64,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let case = Case::new::<T>(&mut rng, dims);
    let SsmUpdateCudaDims {
        batch,
        heads: h,
        head_dim: p,
        groups: gr,
        state: n,
    } = dims;
    let per = h * p * n;
    let slots = batch + 2;
    let slot_of: Vec<i32> = (0..batch).map(|b| ((2 * b + 1) % slots) as i32).collect();
    let st0: Vec<f32> = uniform::<S>(&mut rng, slots * per, -1.0, 1.0);
    let [zc, xc, bc, cc, dtc] = case.cols();

    let mut st: Vec<f32> = slot_of
        .iter()
        .flat_map(|&s| st0[s as usize * per..][..per].to_vec())
        .collect();
    let z = case.gather(zc, h * p);
    let want = cpu::ssm_state_update(
        &mut st,
        &case.gather(xc, h * p),
        &case.gather(dtc, h),
        &case.dt_bias,
        &case.a_log,
        &case.gather(bc, gr * n),
        &case.gather(cc, gr * n),
        with_d.then_some(&case.d[..]),
        with_z.then_some(&z[..]),
        dt_limit,
        SsmUpdateDims {
            batch,
            heads: h,
            head_dim: p,
            groups: gr,
            state: n,
        },
    )
    .unwrap();
    let mut want_state = st0.clone();
    for (b, &s) in slot_of.iter().enumerate() {
        for (o, &v) in want_state[s as usize * per..][..per]
            .iter_mut()
            .zip(&st[b * per..][..per])
        {
            *o = round::<S>(v);
        }
    }

    let dproj = g.upload(&to_t::<T>(&case.proj)).unwrap();
    let ddtb = g.upload(&to_t::<T>(&case.dt_bias)).unwrap();
    let dal = g.upload(&to_t::<T>(&case.a_log)).unwrap();
    let dd = g.upload(&to_t::<T>(&case.d)).unwrap();
    let dsl = g.stream().clone_htod(&slot_of).unwrap();
    let mut dst = g.upload(&to_t::<S>(&st0)).unwrap();
    let mut dy = g
        .upload(&vec![T::from_f32(f32::NAN); batch * h * p])
        .unwrap();
    let col = |offset| Strided {
        buf: &dproj,
        offset,
        row_stride: case.width,
    };
    let inp = SsmUpdateInputs {
        x: col(xc),
        dt: col(dtc),
        dt_bias: &ddtb,
        a_log: &dal,
        b: col(bc),
        c: col(cc),
        d: with_d.then_some(&dd),
        z: with_z.then_some(col(zc)),
        dt_limit,
        slot_idx: Some(&dsl),
    };
    g.ssm_update(&mut dst, &inp, &mut dy, dims).unwrap();
    g.synchronize().unwrap();
    let what = format!(
        "ssm_update_{}_state_{} {dims:?} D {with_d} z {with_z} dt_limit {dt_limit:?}",
        T::SUFFIX,
        S::SUFFIX
    );
    compare(&what, &to_f32(&g.download(&dy).unwrap()), &want, p, tol_y);
    compare(
        &format!("{what}: state"),
        &to_f32(&g.download(&dst).unwrap()),
        &want_state,
        n,
        tol_state,
    );
}

fn sweep<T: GpuDtype, S: SsmStateDtype>(tol_y: f64, tol_state: f64) {
    let g = gpu();
    let mut seed = 0;
    // N = 256, 128, 64 take the vector path; 48 the generic one. P = 8 is fewer rows than a block.
    let shapes = [
        (1, 24, 128, 1, 256),
        (3, 4, 64, 2, 128),
        (3, 8, 32, 2, 64),
        (2, 4, 16, 1, 48),
        (3, 2, 8, 2, 128),
    ];
    for (batch, heads, head_dim, groups, state) in shapes {
        let dims = SsmUpdateCudaDims {
            batch,
            heads,
            head_dim,
            groups,
            state,
        };
        for (with_d, with_z) in [(false, false), (true, false), (true, true)] {
            for dt_limit in [(0.0, f32::INFINITY), (0.001, 0.1)] {
                seed += 1;
                update_case::<T, S>(&g, dims, with_d, with_z, dt_limit, tol_y, tol_state, seed);
            }
        }
    }
}

#[test]
fn ssm_update_f32_state_f32_matches_cpu() {
    sweep::<f32, f32>(1e-5, 1e-5);
}

#[test]
fn ssm_update_bf16_state_f32_matches_cpu() {
    sweep::<half::bf16, f32>(1e-2, 1e-5);
}

#[test]
fn ssm_update_f16_state_f32_matches_cpu() {
    sweep::<half::f16, f32>(2e-3, 1e-5);
}

#[test]
fn ssm_update_f32_state_bf16_matches_cpu() {
    // The state rounded to bf16 the same way on both sides: a tie flipped by f32 rounding noise
    // costs one bf16 ulp on a few elements.
    sweep::<f32, half::bf16>(1e-5, 1e-3);
}

#[test]
fn ssm_update_bf16_state_bf16_matches_cpu() {
    sweep::<half::bf16, half::bf16>(1e-2, 1e-2);
}

#[test]
fn ssm_update_f16_state_bf16_matches_cpu() {
    sweep::<half::f16, half::bf16>(2e-3, 1e-2);
}

/// `steps` updates of one sequence (x, B, C, dt rows of a [T, width] projection, one launch per
/// token) equal `cpu::ssd_recurrent` over the same tokens: outputs and final state.
fn recurrent_case<T: GpuDtype>(g: &Gpu, steps: usize, tol: f64, seed: u64) {
    let (h, p, gr, n) = (8, 64, 2, 128);
    let dims = SsmUpdateCudaDims {
        batch: steps, // the projection rows: one token each
        heads: h,
        head_dim: p,
        groups: gr,
        state: n,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let case = Case::new::<T>(&mut rng, dims);
    let [_, xc, bc, cc, dtc] = case.cols();
    let s0 = uniform::<f32>(&mut rng, h * p * n, -1.0, 1.0);
    let x = case.gather(xc, h * p);
    let dt = case.gather(dtc, h);
    let b = case.gather(bc, gr * n);
    let c = case.gather(cc, gr * n);
    let inp = SsdInputs {
        x: &x,
        dt: &dt,
        dt_bias: &case.dt_bias,
        a_log: &case.a_log,
        b: &b,
        c: &c,
        d: Some(&case.d),
        dt_limit: (0.0, f32::INFINITY),
        initial_state: Some(&s0),
    };
    let (want, want_state) = cpu::ssd_recurrent(
        &inp,
        SsdDims {
            seqlen: steps,
            heads: h,
            head_dim: p,
            groups: gr,
            state: n,
        },
    )
    .unwrap();

    let dproj = g.upload(&to_t::<T>(&case.proj)).unwrap();
    let ddtb = g.upload(&to_t::<T>(&case.dt_bias)).unwrap();
    let dal = g.upload(&to_t::<T>(&case.a_log)).unwrap();
    let dd = g.upload(&to_t::<T>(&case.d)).unwrap();
    let mut dst = g.upload(&s0).unwrap();
    let mut got = Vec::new();
    for t in 0..steps {
        let col = |offset| Strided {
            buf: &dproj,
            offset: t * case.width + offset,
            row_stride: case.width,
        };
        let step = SsmUpdateInputs {
            x: col(xc),
            dt: col(dtc),
            dt_bias: &ddtb,
            a_log: &dal,
            b: col(bc),
            c: col(cc),
            d: Some(&dd),
            z: None,
            dt_limit: (0.0, f32::INFINITY),
            slot_idx: None,
        };
        let mut dy = g.upload(&vec![T::from_f32(f32::NAN); h * p]).unwrap();
        g.ssm_update(
            &mut dst,
            &step,
            &mut dy,
            SsmUpdateCudaDims { batch: 1, ..dims },
        )
        .unwrap();
        got.extend(to_f32(&g.download(&dy).unwrap()));
    }
    let what = format!("ssm_update_{} x {steps} steps vs ssd_recurrent", T::SUFFIX);
    compare(&what, &got, &want, h * p, tol);
    compare(
        &format!("{what}: state"),
        &g.download(&dst).unwrap(),
        &want_state,
        n,
        1e-5,
    );
}

#[test]
fn ssm_update_steps_equal_ssd_recurrent() {
    let g = gpu();
    recurrent_case::<f32>(&g, 6, 1e-5, 11);
    recurrent_case::<half::bf16>(&g, 6, 1e-2, 12);
}

#[test]
fn ssm_update_rejects_bad_shapes() {
    let g = gpu();
    let dims = SsmUpdateCudaDims {
        batch: 2,
        heads: 4,
        head_dim: 8,
        groups: 2,
        state: 16,
    };
    let proj = g.upload(&vec![0f32; 2 * 200]).unwrap();
    let hb = g.upload(&[0f32; 4]).unwrap();
    let mut st = g.zeros::<f32>(2 * 4 * 8 * 16).unwrap();
    let mut y = g.zeros::<f32>(2 * 32).unwrap();
    let col = |offset| Strided {
        buf: &proj,
        offset,
        row_stride: 200,
    };
    let inp = SsmUpdateInputs {
        x: col(0),
        dt: col(32),
        dt_bias: &hb,
        a_log: &hb,
        b: col(40),
        c: col(72),
        d: None,
        z: None,
        dt_limit: (0.0, f32::INFINITY),
        slot_idx: None,
    };
    g.ssm_update(&mut st, &inp, &mut y, dims).unwrap();
    let err = |e: falcon_h1_kernels::Result<()>| e.unwrap_err().to_string();
    let e = err(g.ssm_update(
        &mut st,
        &inp,
        &mut y,
        SsmUpdateCudaDims { groups: 3, ..dims },
    ));
    assert!(e.contains("multiple of groups"), "{e}");
    let e = err(g.ssm_update(
        &mut st,
        &inp,
        &mut y,
        SsmUpdateCudaDims { batch: 3, ..dims },
    ));
    assert!(e.contains("`x`") || e.contains("`y`"), "{e}");
    let bad = SsmUpdateInputs { c: col(190), ..inp };
    let e = err(g.ssm_update(&mut st, &bad, &mut y, dims));
    assert!(e.contains("`c`"), "{e}");
    let bad = SsmUpdateInputs {
        dt_limit: (0.5, 0.1),
        ..inp
    };
    let e = err(g.ssm_update(&mut st, &bad, &mut y, dims));
    assert!(e.contains("dt_limit"), "{e}");
    let mut st_bad = g.zeros::<f32>(100).unwrap();
    let e = err(g.ssm_update(&mut st_bad, &inp, &mut y, dims));
    assert!(e.contains("`state`"), "{e}");
}
