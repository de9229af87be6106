//! The causal depthwise conv1d kernels (packed varlen prefill with conv states, one-token decode)
//! against `cpu::causal_conv1d` / `cpu::causal_conv1d_update`, in f32, bf16 and f16. Built only
//! with `--features cuda` and meant for a GPU machine: without a GPU every test here fails,
//! saying so. Outputs are poisoned with NaN before each launch.

use crate::common;

use common::gpu_check::{compare, gpu, to_f32, to_t};

use falcon_h1_kernels::cpu;
use falcon_h1_kernels::cuda::conv1d::{Conv1dDims, Strided};
use falcon_h1_kernels::cuda::{Gpu, GpuDtype};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Values rounded to `T`, so that the CPU reference sees exactly what the kernel sees.
fn draw<T: GpuDtype>(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| T::from_f32(rng.random_range(-scale..scale)).to_f32())
        .collect()
}

/// Where x sits in its buffer: `offset` elements in, rows `c + extra` apart (a column slice).
#[derive(Clone, Copy)]
struct Layout {
    offset: usize,
    extra: usize,
}
const DENSE: Layout = Layout {
    offset: 0,
    extra: 0,
};

/// Packed prefill of sequences of `lens` over `c` channels, width `k`, against the CPU per
/// sequence; with `states`, sequence s uses slot `batch - s` of `batch + 1` slots (slot 0 must
/// stay untouched).
#[allow(clippy::too_many_arguments)]
fn prefill_case<T: GpuDtype>(
    g: &Gpu,
    lens: &[usize],
    c: usize,
    k: usize,
    states: bool,
    bias: bool,
    lay: Layout,
    tol: f64,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let batch = lens.len();
    let tokens: usize = lens.iter().sum();
    let stride = c + lay.extra;
    let xbuf = draw::<T>(&mut rng, lay.offset + tokens * stride, 2.0);
    let w = draw::<T>(&mut rng, c * k, 0.6);
    let b = draw::<T>(&mut rng, c, 0.5);
    let slots = batch + 1;
    let st0 = draw::<T>(&mut rng, slots * c * (k - 1), 2.0);
    let slot_of = |s: usize| batch - s;

    let mut want = vec![0f32; tokens * c];
    let mut want_state = st0.clone();
    let mut start = 0;
    for (s, &l) in lens.iter().enumerate() {
        if l == 0 {
            // An empty sequence: no outputs, its state unchanged (the CPU takes no empty x).
            continue;
        }
        let mut xs = Vec::with_capacity(l * c);
        for t in start..start + l {
            xs.extend_from_slice(&xbuf[lay.offset + t * stride..][..c]);
        }
        let row = c * (k - 1);
        let init = states.then(|| &st0[slot_of(s) * row..][..row]);
        let (o, fs) =
            cpu::causal_conv1d(&xs, &w, bias.then_some(&b[..]), init, c, k, true).unwrap();
        want[start * c..(start + l) * c].copy_from_slice(&o);
        if states {
            want_state[slot_of(s) * row..][..row].copy_from_slice(&fs);
        }
        start += l;
    }

    let mut cu = vec![0i32];
    for &l in lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    let slot_idx: Vec<i32> = (0..batch).map(|s| slot_of(s) as i32).collect();
    let dx = g.upload(&to_t::<T>(&xbuf)).unwrap();
    let dw = g.upload(&to_t::<T>(&w)).unwrap();
    let db = g.upload(&to_t::<T>(&b)).unwrap();
    let mut dst = g.upload(&to_t::<T>(&st0)).unwrap();
    let dcu = g.stream().clone_htod(&cu).unwrap();
    let dsl = g.stream().clone_htod(&slot_idx).unwrap();
    let mut dout = g.upload(&vec![T::from_f32(f32::NAN); tokens * c]).unwrap();
    let x = Strided {
        buf: &dx,
        offset: lay.offset,
        row_stride: stride,
    };
    let dims = Conv1dDims {
        batch,
        tokens,
        channels: c,
        width: k,
        silu: true,
    };
    g.conv1d_fwd_into(
        x,
        &dw,
        bias.then_some(&db),
        states.then_some(&mut dst),
        Some(&dcu),
        Some(&dsl),
        &mut dout,
        dims,
    )
    .unwrap();
    g.synchronize().unwrap();
    let what = format!(
        "conv1d_fwd_{} lens {lens:?} C {c} K {k} states {states} bias {bias} offset {} stride {stride}",
        T::SUFFIX,
        lay.offset
    );
    compare(&what, &to_f32(&g.download(&dout).unwrap()), &want, c, tol);
    let got_state = to_f32(&g.download(&dst).unwrap());
    if states {
        // The state holds copies of inputs: exact.
        compare(
            &format!("{what}: final state"),
            &got_state,
            &want_state,
            c * (k - 1),
            1e-7,
        );
    } else {
        assert_eq!(got_state, st0, "{what}: state changed without being passed");
    }
}

fn sweep<T: GpuDtype>(tol: f64) {
    let g = gpu();
    let mut seed = 100;
    for k in 2..=4 {
        for &l in &[1usize, 2, 3, 127, 129, 1000] {
            for (c, lay) in [
                (200, DENSE),
                (37, DENSE),
                (
                    256,
                    Layout {
                        offset: 64,
                        extra: 96,
                    },
                ),
                (
                    128,
                    Layout {
                        offset: 3,
                        extra: 5,
                    },
                ),
            ] {
                seed += 1;
                prefill_case::<T>(&g, &[l], c, k, seed % 2 == 0, true, lay, tol, seed);
            }
        }
        // A batch of different lengths (one shorter than K-1, one empty), initial states.
        for lens in [vec![5usize, 1, 300], vec![2, 0, 77, 1000], vec![64, 64, 64]] {
            seed += 1;
            prefill_case::<T>(&g, &lens, 200, k, true, seed % 2 == 0, DENSE, tol, seed);
            seed += 1;
            let lay = Layout {
                offset: 8,
                extra: 24,
            };
            prefill_case::<T>(&g, &lens, 96, k, true, true, lay, tol, seed);
        }
    }
}

#[test]
fn conv1d_fwd_f32_matches_cpu() {
    sweep::<f32>(1e-5);
}

#[test]
fn conv1d_fwd_bf16_matches_cpu() {
    sweep::<half::bf16>(1e-2);
}

#[test]
fn conv1d_fwd_f16_matches_cpu() {
    sweep::<half::f16>(2e-3);
}

/// A batch of one decode step against `cpu::causal_conv1d_update`, slots permuted, output and
/// state.
fn update_case<T: GpuDtype>(g: &Gpu, batch: usize, c: usize, k: usize, tol: f64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let stride = c + 16;
    let xbuf = draw::<T>(&mut rng, batch * stride, 2.0);
    let w = draw::<T>(&mut rng, c * k, 0.6);
    let b = draw::<T>(&mut rng, c, 0.5);
    let slots = batch + 2;
    let row = c * (k - 1);
    let st0 = draw::<T>(&mut rng, slots * row, 2.0);
    let slot_idx: Vec<i32> = (0..batch).map(|s| ((s * 2 + 1) % slots) as i32).collect();

    let mut xs = Vec::new();
    let mut st = Vec::new();
    for s in 0..batch {
        xs.extend_from_slice(&xbuf[s * stride..][..c]);
        st.extend_from_slice(&st0[slot_idx[s] as usize * row..][..row]);
    }
    let want = cpu::causal_conv1d_update(&xs, &mut st, &w, Some(&b), batch, c, k, true).unwrap();
    let mut want_state = st0.clone();
    for s in 0..batch {
        want_state[slot_idx[s] as usize * row..][..row].copy_from_slice(&st[s * row..][..row]);
    }

    let dx = g.upload(&to_t::<T>(&xbuf)).unwrap();
    let dw = g.upload(&to_t::<T>(&w)).unwrap();
    let db = g.upload(&to_t::<T>(&b)).unwrap();
    let mut dst = g.upload(&to_t::<T>(&st0)).unwrap();
    let dsl = g.stream().clone_htod(&slot_idx).unwrap();
    let mut dout = g.upload(&vec![T::from_f32(f32::NAN); batch * c]).unwrap();
    let dims = Conv1dDims {
        batch,
        tokens: batch,
        channels: c,
        width: k,
        silu: true,
    };
    let x = Strided {
        buf: &dx,
        offset: 0,
        row_stride: stride,
    };
    g.conv1d_update_into(x, &dw, Some(&db), &mut dst, Some(&dsl), &mut dout, dims)
        .unwrap();
    g.synchronize().unwrap();
    let what = format!("conv1d_update_{} B {batch} C {c} K {k}", T::SUFFIX);
    compare(&what, &to_f32(&g.download(&dout).unwrap()), &want, c, tol);
    compare(
        &format!("{what}: state"),
        &to_f32(&g.download(&dst).unwrap()),
        &want_state,
        row,
        1e-7,
    );
}

#[test]
fn conv1d_update_matches_cpu() {
    let g = gpu();
    let mut seed = 500;
    for k in 2..=4 {
        for (batch, c) in [(1, 3584), (3, 200), (5, 37)] {
            seed += 1;
            update_case::<f32>(&g, batch, c, k, 1e-5, seed);
            update_case::<half::bf16>(&g, batch, c, k, 1e-2, seed);
            update_case::<half::f16>(&g, batch, c, k, 2e-3, seed);
        }
    }
}

/// Prefill of L tokens then n decode steps equals a prefill of L + n (outputs and state).
fn chain_case<T: GpuDtype>(g: &Gpu, l: usize, n: usize, c: usize, k: usize, tol: f64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let total = l + n;
    let x = draw::<T>(&mut rng, total * c, 2.0);
    let w = draw::<T>(&mut rng, c * k, 0.6);
    let b = draw::<T>(&mut rng, c, 0.5);
    let (want, want_state) = cpu::causal_conv1d(&x, &w, Some(&b), None, c, k, true).unwrap();

    let dx = g.upload(&to_t::<T>(&x)).unwrap();
    let dw = g.upload(&to_t::<T>(&w)).unwrap();
    let db = g.upload(&to_t::<T>(&b)).unwrap();
    // Zeros = no history, as the CPU run without a state.
    let mut dst = g.zeros::<T>(c * (k - 1)).unwrap();
    let mut got = vec![0f32; total * c];
    let dims = Conv1dDims {
        batch: 1,
        tokens: l,
        channels: c,
        width: k,
        silu: true,
    };
    if l > 0 {
        let mut dout = g.upload(&vec![T::from_f32(f32::NAN); l * c]).unwrap();
        g.conv1d_fwd_into(
            Strided::dense(&dx, c),
            &dw,
            Some(&db),
            Some(&mut dst),
            None,
            None,
            &mut dout,
            dims,
        )
        .unwrap();
        got[..l * c].copy_from_slice(&to_f32(&g.download(&dout).unwrap()));
    }
    for i in 0..n {
        let mut dout = g.upload(&vec![T::from_f32(f32::NAN); c]).unwrap();
        let xi = Strided {
            buf: &dx,
            offset: (l + i) * c,
            row_stride: c,
        };
        g.conv1d_update_into(xi, &dw, Some(&db), &mut dst, None, &mut dout, dims)
            .unwrap();
        got[(l + i) * c..][..c].copy_from_slice(&to_f32(&g.download(&dout).unwrap()));
    }
    let what = format!("conv1d prefill {l} + decode {n}, {} C {c} K {k}", T::SUFFIX);
    compare(&what, &got, &want, c, tol);
    compare(
        &format!("{what}: state"),
        &to_f32(&g.download(&dst).unwrap()),
        &want_state,
        k - 1,
        1e-7,
    );
}

#[test]
fn conv1d_prefill_then_decode_equals_longer_prefill() {
    let g = gpu();
    let mut seed = 900;
    for k in 2..=4 {
        for (l, n) in [(1, 4), (2, 1), (129, 5), (1000, 3)] {
            seed += 1;
            chain_case::<f32>(&g, l, n, 256, k, 1e-5, seed);
            chain_case::<half::bf16>(&g, l, n, 256, k, 1e-2, seed);
        }
    }
}

/// A slot index of -1 (padding) reads zeros and writes nothing back.
#[test]
fn conv1d_padding_slot_is_left_alone() {
    let g = gpu();
    let (c, k) = (64, 4);
    let mut rng = StdRng::seed_from_u64(3);
    let x = draw::<f32>(&mut rng, 2 * c, 1.0);
    let w = draw::<f32>(&mut rng, c * k, 0.6);
    let st0 = draw::<f32>(&mut rng, 2 * c * (k - 1), 1.0);
    let dx = g.upload(&x).unwrap();
    let dw = g.upload(&w).unwrap();
    let mut dst = g.upload(&st0).unwrap();
    let dsl = g.stream().clone_htod(&[1i32, -1]).unwrap();
    let mut dout = g.upload(&vec![f32::NAN; 2 * c]).unwrap();
    let dims = Conv1dDims {
        batch: 2,
        tokens: 2,
        channels: c,
        width: k,
        silu: false,
    };
    g.conv1d_update_into(
        Strided::dense(&dx, c),
        &dw,
        None,
        &mut dst,
        Some(&dsl),
        &mut dout,
        dims,
    )
    .unwrap();
    let out = g.download(&dout).unwrap();
    let st = g.download(&dst).unwrap();
    let row = c * (k - 1);
    assert_eq!(&st[..row], &st0[..row], "slot 0 is nobody's");
    for ch in 0..c {
        // The padding sequence sees zeros: out = w[K-1] x.
        let want = w[ch * k + k - 1] * x[c + ch];
        assert!((out[c + ch] - want).abs() < 1e-6, "channel {ch}");
    }
}

#[test]
fn conv1d_rejects_bad_shapes() {
    let g = gpu();
    let x = g.upload(&[0f32; 40]).unwrap();
    let w = g.upload(&[0f32; 32]).unwrap();
    let mut st = g.upload(&[0f32; 24]).unwrap();
    let mut out = g.upload(&[0f32; 40]).unwrap();
    let dims = Conv1dDims {
        batch: 1,
        tokens: 5,
        channels: 8,
        width: 4,
        silu: true,
    };
    let err = |r: falcon_h1_kernels::Result<()>| r.unwrap_err().to_string();
    let x8 = Strided::dense(&x, 8);
    let e = err(g.conv1d_fwd_into(
        x8,
        &w,
        None,
        None,
        None,
        None,
        &mut out,
        Conv1dDims { width: 5, ..dims },
    ));
    assert!(e.contains("width"), "{e}");
    let e = err(g.conv1d_fwd_into(
        x8,
        &w,
        None,
        None,
        None,
        None,
        &mut out,
        Conv1dDims { tokens: 6, ..dims },
    ));
    assert!(e.contains("`x`"), "{e}");
    let e = err(g.conv1d_fwd_into(
        x8,
        &w,
        None,
        None,
        None,
        None,
        &mut out,
        Conv1dDims { batch: 2, ..dims },
    ));
    assert!(e.contains("cu_seqlens"), "{e}");
    let mut st_bad = g.upload(&[0f32; 25]).unwrap();
    let e = err(g.conv1d_fwd_into(x8, &w, None, Some(&mut st_bad), None, None, &mut out, dims));
    assert!(e.contains("`conv_state`"), "{e}");
    let e = err(g.conv1d_update_into(
        x8,
        &w,
        None,
        &mut st,
        None,
        &mut out,
        Conv1dDims { batch: 5, ..dims },
    ));
    assert!(e.contains("`out`") || e.contains("slots"), "{e}");
    let narrow = Strided {
        buf: &x,
        offset: 0,
        row_stride: 4,
    };
    let e = err(g.conv1d_fwd_into(narrow, &w, None, None, None, None, &mut out, dims));
    assert!(e.contains("row stride"), "{e}");
}
