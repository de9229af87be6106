//! The SSD chunked prefill kernels (kernels/ssd.cu) against `cpu::ssd::ssd_chunked`, run per
//! sequence on the dtype-rounded inputs, in f32, bf16 and f16. Built only with `--features cuda`
//! and meant for a GPU machine: where there is no GPU or driver every test here fails, saying so.
//! Outputs and final states are poisoned with NaN before each launch, so an element the kernels
//! skip is caught. x, B and C are strided column views of one packed conv output, dt a strided
//! view of a wider projection, as in the model.

use crate::common;

use common::gpu_check::{compare, gpu, to_f32, to_t};

use falcon_h1_kernels::cpu::ssd::{ssd_chunked, SsdDims, SsdInputs};
use falcon_h1_kernels::cuda::ssd::{Cols, SsdCudaDims, SsdCudaInputs};
use falcon_h1_kernels::cuda::{Gpu, GpuDtype};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Values rounded to `T`, so the CPU reference sees exactly what the kernel sees.
fn round<T: GpuDtype>(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| T::from_f32(x).to_f32()).collect()
}

fn uniform(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Standard normal draws (Box-Muller).
fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f32 = rng.random_range(1e-7f32..1.0);
            let v: f32 = rng.random_range(0f32..1.0);
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
struct Case<'a> {
    lens: &'a [usize],
    heads: usize,
    head_dim: usize,
    groups: usize,
    state: usize,
    chunk: usize,
    init: bool,
    with_d: bool,
    dt_limit: (f32, f32),
    /// Extra columns after x | B | C in each row of the packed input: `XBC_PAD` (odd, so rows
    /// are not 16-byte aligned and the kernels load element by element) or `XBC_PAD_ALIGNED`
    /// (16-byte aligned rows: the vector and cp.async loads).
    xbc_pad: usize,
}

const BASE: Case = Case {
    lens: &[1],
    heads: 4,
    head_dim: 64,
    groups: 1,
    state: 64,
    chunk: 64,
    init: false,
    with_d: true,
    dt_limit: (0.0, f32::INFINITY),
    xbc_pad: XBC_PAD,
};

/// Host-side inputs of one case, already rounded to `T`.
struct Host {
    t: usize,
    xbc: Vec<f32>, // [T, H*P + 2*G*N + 3]: x | B | C | padding, as the conv output
    dtp: Vec<f32>, // [T, H + 5]: dt in columns 2 .. 2+H
    dt_bias: Vec<f32>,
    a_log: Vec<f32>,
    d: Vec<f32>,
    state0: Vec<f32>, // [slots, H, P, N]
    slots: Vec<i32>,
}

const XBC_PAD: usize = 3;
const XBC_PAD_ALIGNED: usize = 8;
const DT_PAD: usize = 5;
const DT_OFF: usize = 2;

fn make<T: GpuDtype>(c: &Case, seed: u64) -> Host {
    let mut rng = StdRng::seed_from_u64(seed);
    let (h, p, g, n) = (c.heads, c.head_dim, c.groups, c.state);
    let t: usize = c.lens.iter().sum();
    let w = h * p + 2 * g * n + c.xbc_pad;
    let xbc = round::<T>(uniform(&mut rng, t * w, -1.0, 1.0));
    // Realistic steps: softplus(randn - 4 + small bias) ~ 0.02.
    let dtp = round::<T>(
        randn(&mut rng, t * (h + DT_PAD))
            .iter()
            .map(|v| v - 4.0)
            .collect(),
    );
    let dt_bias = round::<T>(uniform(&mut rng, h, -0.5, 0.5));
    let a_log = round::<T>(uniform(&mut rng, h, 0.0, 2.7));
    let d = round::<T>(uniform(&mut rng, h, 0.5, 1.5));
    let n_slots = c.lens.len() + 2;
    let state0 = uniform(&mut rng, n_slots * h * p * n, -1.0, 1.0);
    // Slots reversed and shifted, so that slot != sequence index.
    let slots = (0..c.lens.len())
        .map(|i| (c.lens.len() - i) as i32)
        .collect();
    Host {
        t,
        xbc,
        dtp,
        dt_bias,
        a_log,
        d,
        state0,
        slots,
    }
}

/// The CPU reference, sequence by sequence: (y [T, H, P], state after the call [slots, H, P, N]).
fn reference(c: &Case, hs: &Host) -> (Vec<f32>, Vec<f32>) {
    let (h, p, g, n) = (c.heads, c.head_dim, c.groups, c.state);
    let w = h * p + 2 * g * n + c.xbc_pad;
    let per = h * p * n;
    let mut y = Vec::with_capacity(hs.t * h * p);
    let mut state = hs.state0.clone();
    let mut start = 0;
    for (s, &len) in c.lens.iter().enumerate() {
        let slot = hs.slots[s] as usize;
        if len == 0 {
            if !c.init {
                state[slot * per..][..per].fill(0.0);
            }
            continue;
        }
        let rows = start..start + len;
        let col = |lo: usize, width: usize| -> Vec<f32> {
            rows.clone()
                .flat_map(|r| hs.xbc[r * w + lo..][..width].to_vec())
                .collect()
        };
        let x = col(0, h * p);
        let b = col(h * p, g * n);
        let cc = col(h * p + g * n, g * n);
        let dt: Vec<f32> = rows
            .clone()
            .flat_map(|r| hs.dtp[r * (h + DT_PAD) + DT_OFF..][..h].to_vec())
            .collect();
        let init = state[slot * per..][..per].to_vec();
        let inp = SsdInputs {
            x: &x,
            dt: &dt,
            dt_bias: &hs.dt_bias,
            a_log: &hs.a_log,
            b: &b,
            c: &cc,
            d: c.with_d.then_some(&hs.d[..]),
            dt_limit: c.dt_limit,
            initial_state: c.init.then_some(&init[..]),
        };
        let dims = SsdDims {
            seqlen: len,
            heads: h,
            head_dim: p,
            groups: g,
            state: n,
        };
        let (ys, fs) = ssd_chunked(&inp, dims, c.chunk).unwrap();
        y.extend_from_slice(&ys);
        state[slot * per..][..per].copy_from_slice(&fs);
        start += len;
    }
    (y, state)
}

/// Runs the GPU kernels on the case: (y, the whole state buffer after the call).
fn run_gpu<T: GpuDtype>(gp: &Gpu, c: &Case, hs: &Host, state_in: &[f32]) -> (Vec<f32>, Vec<f32>) {
    run_gpu_with::<T>(gp, c, hs, state_in, false)
}

/// [`run_gpu`] through the chunked kernels or, with `reference_scan`, the recurrent
/// `Gpu::ssd_scan_reference`.
fn run_gpu_with<T: GpuDtype>(
    gp: &Gpu,
    c: &Case,
    hs: &Host,
    state_in: &[f32],
    reference_scan: bool,
) -> (Vec<f32>, Vec<f32>) {
    let (h, p, g, n) = (c.heads, c.head_dim, c.groups, c.state);
    let w = h * p + 2 * g * n + c.xbc_pad;
    let xbc = gp.upload(&to_t::<T>(&hs.xbc)).unwrap();
    let dtp = gp.upload(&to_t::<T>(&hs.dtp)).unwrap();
    let dt_bias = gp.upload(&to_t::<T>(&hs.dt_bias)).unwrap();
    let a_log = gp.upload(&to_t::<T>(&hs.a_log)).unwrap();
    let d = gp.upload(&to_t::<T>(&hs.d)).unwrap();
    let view = |offset: usize| Cols {
        buf: &xbc,
        offset,
        row_stride: w,
    };
    let inp = SsdCudaInputs {
        x: view(0),
        dt: Cols {
            buf: &dtp,
            offset: DT_OFF,
            row_stride: h + DT_PAD,
        },
        dt_bias: &dt_bias,
        a_log: &a_log,
        b: view(h * p),
        c: view(h * p + g * n),
        d: c.with_d.then_some(&d),
    };
    let dims = SsdCudaDims {
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
        chunk_size: c.chunk,
        dt_limit: c.dt_limit,
    };
    let mut cu = vec![0usize];
    for &l in c.lens {
        cu.push(cu.last().unwrap() + l);
    }
    let mut state = gp.upload(state_in).unwrap();
    let mut y = gp
        .upload(&vec![T::from_f32(f32::NAN); hs.t * h * p])
        .unwrap();
    if reference_scan {
        gp.ssd_scan_reference(&inp, dims, &cu, &hs.slots, &mut state, c.init, &mut y)
            .unwrap();
    } else {
        gp.ssd_chunked(&inp, dims, &cu, Some(&hs.slots), &mut state, c.init, &mut y)
            .unwrap();
    }
    gp.synchronize().unwrap();
    (
        to_f32(&gp.download(&y).unwrap()),
        gp.download(&state).unwrap(),
    )
}

fn check<T: GpuDtype>(gp: &Gpu, c: &Case, tol: f64, seed: u64) {
    check_with::<T>(gp, c, tol, seed, false)
}

fn check_with<T: GpuDtype>(gp: &Gpu, c: &Case, tol: f64, seed: u64, reference_scan: bool) {
    let hs = make::<T>(c, seed);
    let (want_y, want_state) = reference(c, &hs);
    // Poison: the slots the batch uses are NaN unless they hold initial states.
    let per = c.heads * c.head_dim * c.state;
    let mut state_in = hs.state0.clone();
    if !c.init {
        for &s in &hs.slots {
            state_in[s as usize * per..][..per].fill(f32::NAN);
        }
    }
    let (y, state) = run_gpu_with::<T>(gp, c, &hs, &state_in, reference_scan);
    let what = format!(
        "{}ssd_{} lens {:?} H{} P{} G{} N{} chunk {}{}{}",
        if reference_scan { "reference " } else { "" },
        T::SUFFIX,
        c.lens,
        c.heads,
        c.head_dim,
        c.groups,
        c.state,
        c.chunk,
        if c.init { " +init" } else { "" },
        if c.with_d { " +D" } else { "" }
    );
    compare(
        &format!("{what}: y"),
        &y,
        &want_y,
        c.heads * c.head_dim,
        tol,
    );
    compare(&format!("{what}: state"), &state, &want_state, c.state, tol);
}

fn cases() -> Vec<Case<'static>> {
    vec![
        Case { lens: &[1], ..BASE },
        Case {
            lens: &[2],
            init: true,
            ..BASE
        },
        Case {
            lens: &[127],
            groups: 2,
            ..BASE
        },
        Case {
            lens: &[129],
            chunk: 128,
            state: 128,
            init: true,
            ..BASE
        },
        Case {
            lens: &[200],
            chunk: 256,
            head_dim: 128,
            state: 256,
            groups: 2,
            ..BASE
        },
        Case {
            lens: &[1000],
            chunk: 256,
            head_dim: 128,
            state: 256,
            groups: 2,
            init: true,
            ..BASE
        },
        Case {
            lens: &[300],
            chunk: 128,
            head_dim: 128,
            state: 128,
            with_d: false,
            ..BASE
        },
        Case {
            lens: &[257],
            chunk: 64,
            head_dim: 64,
            state: 256,
            init: true,
            dt_limit: (0.001, 0.1),
            ..BASE
        },
        Case {
            lens: &[100, 1, 260],
            chunk: 64,
            state: 128,
            groups: 2,
            init: true,
            ..BASE
        },
        Case {
            lens: &[64, 0, 190],
            chunk: 128,
            head_dim: 128,
            state: 64,
            heads: 6,
            groups: 3,
            ..BASE
        },
        // The 7B and 0.5B head shapes with 16-byte aligned rows (the cp.async and vector paths):
        // several sequences, lengths that are not multiples of the chunk, G = 2, initial states.
        Case {
            lens: &[300, 129, 64],
            chunk: 128,
            head_dim: 128,
            state: 256,
            groups: 2,
            init: true,
            xbc_pad: XBC_PAD_ALIGNED,
            ..BASE
        },
        Case {
            lens: &[1, 513, 127],
            chunk: 128,
            head_dim: 64,
            state: 128,
            init: true,
            xbc_pad: XBC_PAD_ALIGNED,
            ..BASE
        },
        Case {
            lens: &[1000],
            chunk: 256,
            head_dim: 128,
            state: 256,
            groups: 2,
            init: true,
            xbc_pad: XBC_PAD_ALIGNED,
            ..BASE
        },
        Case {
            lens: &[190, 77],
            chunk: 64,
            head_dim: 128,
            state: 256,
            heads: 6,
            groups: 3,
            with_d: false,
            xbc_pad: XBC_PAD_ALIGNED,
            ..BASE
        },
        Case {
            lens: &[257, 2],
            chunk: 128,
            head_dim: 64,
            state: 128,
            groups: 2,
            xbc_pad: XBC_PAD_ALIGNED,
            ..BASE
        },
        // The same head shapes with unaligned rows (element-by-element loads).
        Case {
            lens: &[300, 5],
            chunk: 128,
            head_dim: 128,
            state: 256,
            groups: 2,
            init: true,
            ..BASE
        },
        Case {
            lens: &[129, 250],
            chunk: 128,
            head_dim: 64,
            state: 128,
            init: true,
            ..BASE
        },
    ]
}

fn all_cases<T: GpuDtype>(tol: f64) {
    let gp = gpu();
    for (i, c) in cases().iter().enumerate() {
        check::<T>(&gp, c, tol, 1000 + i as u64);
    }
}

#[test]
fn ssd_f32_matches_cpu() {
    all_cases::<f32>(1e-5);
}

#[test]
fn ssd_bf16_matches_cpu() {
    all_cases::<half::bf16>(1e-2);
}

#[test]
fn ssd_f16_matches_cpu() {
    all_cases::<half::f16>(1e-2);
}

/// A prefill of L tokens in two calls (the state carried through the slot) equals one call.
fn split_prefill<T: GpuDtype>(tol: f64) {
    let gp = gpu();
    let whole = Case {
        lens: &[300],
        chunk: 128,
        head_dim: 64,
        state: 128,
        groups: 2,
        init: true,
        ..BASE
    };
    let hs = make::<T>(&whole, 77);
    let (y_one, st_one) = run_gpu::<T>(&gp, &whole, &hs, &hs.state0);
    // The same tokens as two sequences of one "batch" each, run one after the other.
    let (h, p, g, n) = (whole.heads, whole.head_dim, whole.groups, whole.state);
    let w = h * p + 2 * g * n + whole.xbc_pad;
    let mut y_two = Vec::new();
    let mut state = hs.state0.clone();
    for (lo, len) in [(0usize, 170usize), (170, 130)] {
        let part = Host {
            t: len,
            xbc: hs.xbc[lo * w..(lo + len) * w].to_vec(),
            dtp: hs.dtp[lo * (h + DT_PAD)..(lo + len) * (h + DT_PAD)].to_vec(),
            dt_bias: hs.dt_bias.clone(),
            a_log: hs.a_log.clone(),
            d: hs.d.clone(),
            state0: state.clone(),
            slots: hs.slots.clone(),
        };
        let lens = [len];
        let c = Case {
            lens: &lens,
            ..whole
        };
        let (y, st) = run_gpu::<T>(&gp, &c, &part, &state);
        y_two.extend(y);
        state = st;
    }
    let what = format!("ssd_{} split prefill 170 + 130", T::SUFFIX);
    compare(&format!("{what}: y"), &y_two, &y_one, h * p, tol);
    compare(&format!("{what}: state"), &state, &st_one, n, tol);
}

#[test]
fn ssd_split_prefill_f32() {
    split_prefill::<f32>(1e-5);
}

#[test]
fn ssd_split_prefill_bf16() {
    split_prefill::<half::bf16>(1e-2);
}

/// Unsupported sizes and inconsistent layouts are errors, not wrong answers.
#[test]
fn ssd_rejects_bad_input() {
    let gp = gpu();
    let c = Case {
        lens: &[10],
        ..BASE
    };
    let hs = make::<f32>(&c, 5);
    let (h, p, g, n) = (c.heads, c.head_dim, c.groups, c.state);
    let w = h * p + 2 * g * n + XBC_PAD;
    let xbc = gp.upload(&hs.xbc).unwrap();
    let dtp = gp.upload(&hs.dtp).unwrap();
    let dt_bias = gp.upload(&hs.dt_bias).unwrap();
    let a_log = gp.upload(&hs.a_log).unwrap();
    let view = |offset: usize| Cols {
        buf: &xbc,
        offset,
        row_stride: w,
    };
    let inp = SsdCudaInputs {
        x: view(0),
        dt: Cols {
            buf: &dtp,
            offset: DT_OFF,
            row_stride: h + DT_PAD,
        },
        dt_bias: &dt_bias,
        a_log: &a_log,
        b: view(h * p),
        c: view(h * p + g * n),
        d: None,
    };
    let good = SsdCudaDims {
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
        chunk_size: 64,
        dt_limit: (0.0, f32::INFINITY),
    };
    let mut state = gp.zeros::<f32>(2 * h * p * n).unwrap();
    let mut y = gp.zeros::<f32>(10 * h * p).unwrap();
    let mut run = |dims: SsdCudaDims, cu: &[usize], slots: Option<&[i32]>| {
        gp.ssd_chunked(&inp, dims, cu, slots, &mut state, false, &mut y)
    };
    assert!(run(good, &[0, 10], None).is_ok());
    for (what, dims) in [
        (
            "P = 32",
            SsdCudaDims {
                head_dim: 32,
                ..good
            },
        ),
        ("N = 16", SsdCudaDims { state: 16, ..good }),
        (
            "chunk 100",
            SsdCudaDims {
                chunk_size: 100,
                ..good
            },
        ),
        ("H % G", SsdCudaDims { groups: 3, ..good }),
        (
            "dt_limit",
            SsdCudaDims {
                dt_limit: (1.0, 0.5),
                ..good
            },
        ),
    ] {
        let e = run(dims, &[0, 10], None).unwrap_err().to_string();
        println!("{what}: {e}");
        assert!(e.contains("ssd_chunked"), "{e}");
    }
    for (what, cu, slots) in [
        ("too many tokens", vec![0usize, 11], None),
        ("decreasing", vec![0, 6, 4, 10], None),
        ("cu_seqlens[0] != 0", vec![1, 10], None),
        ("too many sequences for the slots", vec![0, 3, 6, 10], None),
        ("slot out of range", vec![0, 10], Some(vec![2i32])),
        ("slot used twice", vec![0, 5, 10], Some(vec![1i32, 1])),
    ] {
        let e = run(good, &cu, slots.as_deref()).unwrap_err().to_string();
        println!("{what}: {e}");
        assert!(e.contains("ssd_chunked"), "{e}");
    }
}

/// A plan reused across calls (as the model does over its layers) gives the same result every
/// time, equal to the one-shot call: its scratch carries nothing from one call to the next.
#[test]
fn ssd_plan_reuse() {
    let gp = gpu();
    let c = Case {
        lens: &[150, 70],
        chunk: 64,
        head_dim: 128,
        state: 128,
        groups: 2,
        ..BASE
    };
    let hs = make::<half::bf16>(&c, 99);
    let (want_y, _) = reference(&c, &hs);
    let (h, p, g, n) = (c.heads, c.head_dim, c.groups, c.state);
    let w = h * p + 2 * g * n + XBC_PAD;
    let t = hs.t;
    let xbc = gp.upload(&to_t::<half::bf16>(&hs.xbc)).unwrap();
    let dtp = gp.upload(&to_t::<half::bf16>(&hs.dtp)).unwrap();
    let dt_bias = gp.upload(&to_t::<half::bf16>(&hs.dt_bias)).unwrap();
    let a_log = gp.upload(&to_t::<half::bf16>(&hs.a_log)).unwrap();
    let d = gp.upload(&to_t::<half::bf16>(&hs.d)).unwrap();
    let view = |offset: usize| Cols {
        buf: &xbc,
        offset,
        row_stride: w,
    };
    let inp = SsdCudaInputs {
        x: view(0),
        dt: Cols {
            buf: &dtp,
            offset: DT_OFF,
            row_stride: h + DT_PAD,
        },
        dt_bias: &dt_bias,
        a_log: &a_log,
        b: view(h * p),
        c: view(h * p + g * n),
        d: Some(&d),
    };
    let dims = SsdCudaDims {
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
        chunk_size: c.chunk,
        dt_limit: c.dt_limit,
    };
    let cu = [0, 150, 220];
    let mut plan = gp
        .ssd_plan::<half::bf16>(dims, &cu, Some(&hs.slots))
        .unwrap();
    assert_eq!((plan.tokens(), plan.batch(), plan.n_chunks()), (t, 2, 5));
    let mut state = gp.upload(&hs.state0).unwrap();
    let mut first: Option<Vec<f32>> = None;
    for run in 0..3 {
        let mut y = gp
            .upload(&vec![half::bf16::from_f32(f32::NAN); t * h * p])
            .unwrap();
        gp.ssd_chunked_planned(&mut plan, &inp, &mut state, false, &mut y)
            .unwrap();
        let got = to_f32(&gp.download(&y).unwrap());
        compare(
            &format!("ssd_bf16 planned run {run}: y"),
            &got,
            &want_y,
            h * p,
            1e-2,
        );
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "run {run} differs from run 0"),
        }
    }
}

/// The recurrent reference scan (the path for sizes the chunked kernels are not built for: the
/// tiny models' P 4..32, N 16) against the CPU, varlen with an empty sequence, G 1 and 2.
fn reference_scan_cases<T: GpuDtype>(tol: f64) {
    let gp = gpu();
    let small = [
        Case {
            lens: &[1],
            heads: 4,
            head_dim: 16,
            state: 16,
            chunk: 16,
            ..BASE
        },
        Case {
            lens: &[37, 0, 5],
            heads: 8,
            head_dim: 8,
            groups: 2,
            state: 16,
            chunk: 8,
            init: true,
            ..BASE
        },
        Case {
            lens: &[129, 2],
            heads: 6,
            head_dim: 16,
            state: 16,
            chunk: 16,
            with_d: false,
            ..BASE
        },
        Case {
            lens: &[70],
            heads: 4,
            head_dim: 32,
            state: 64,
            chunk: 4,
            init: true,
            dt_limit: (0.0, 0.05),
            ..BASE
        },
        Case {
            lens: &[40],
            heads: 2,
            head_dim: 64,
            state: 128,
            chunk: 64,
            ..BASE
        },
    ];
    for (i, c) in small.iter().enumerate() {
        check_with::<T>(&gp, c, tol, 7000 + i as u64, true);
    }
}

#[test]
fn ssd_reference_scan_f32() {
    reference_scan_cases::<f32>(1e-5);
}

#[test]
fn ssd_reference_scan_bf16() {
    reference_scan_cases::<half::bf16>(1e-2);
}
