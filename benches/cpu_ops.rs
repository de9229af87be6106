//! CPU reference ops at Falcon-H1-0.5B layer shapes (d 1024, Ds 1536, H 24, P 64, N 128,
//! attention 8/2/64). Throughput is reported in FLOP/s (criterion's "elem/s" = FLOP/s here).
//!
//! `cargo bench --bench cpu_ops` (append a filter such as `ssd` to run a subset).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use falcon_h1_kernels::cpu::{self, AttnDims, SsdDims, SsdInputs, SsmUpdateDims};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Duration;

const D: usize = 1024;
const DS: usize = 1536;
const H: usize = 24;
const P: usize = 64;
const N: usize = 128;
const G: usize = 1;
const IN_PROJ: usize = 2 * DS + 2 * G * N + H;
const CONV_DIM: usize = DS + 2 * G * N;

fn vec(r: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

fn bench_linear(c: &mut Criterion) {
    let mut r = StdRng::seed_from_u64(0);
    let w = vec(&mut r, IN_PROJ * D, -0.05, 0.05);
    let mut g = c.benchmark_group("linear_in_proj_1024x3352");
    for rows in [1usize, 16, 256] {
        let x = vec(&mut r, rows * D, -1.0, 1.0);
        g.throughput(Throughput::Elements((2 * rows * D * IN_PROJ) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |b, &rows| {
            b.iter(|| cpu::linear(black_box(&x), &w, rows, D, IN_PROJ).unwrap())
        });
    }
    g.finish();
}

fn bench_ssd(c: &mut Criterion) {
    let mut r = StdRng::seed_from_u64(1);
    let t = 256;
    let x = vec(&mut r, t * H * P, -1.0, 1.0);
    let dt = vec(&mut r, t * H, -5.0, -3.0);
    let dt_bias = vec(&mut r, H, -1.0, 1.0);
    let a_log = vec(&mut r, H, -1.0, 2.0);
    let bm = vec(&mut r, t * G * N, -1.0, 1.0);
    let cm = vec(&mut r, t * G * N, -1.0, 1.0);
    let d = vec(&mut r, H, -1.0, 1.0);
    let inp = SsdInputs {
        x: &x,
        dt: &dt,
        dt_bias: &dt_bias,
        a_log: &a_log,
        b: &bm,
        c: &cm,
        d: Some(&d),
        dt_limit: (0.0, f32::INFINITY),
        initial_state: None,
    };
    let dims = SsdDims {
        seqlen: t,
        heads: H,
        head_dim: P,
        groups: G,
        state: N,
    };
    let mut g = c.benchmark_group("ssd_T256_H24_P64_N128");
    // Recurrence: ~4 FLOP per state element per token.
    g.throughput(Throughput::Elements((4 * t * H * P * N) as u64));
    g.bench_function("recurrent", |b| {
        b.iter(|| cpu::ssd_recurrent(black_box(&inp), dims).unwrap())
    });
    g.bench_function("chunked_128", |b| {
        b.iter(|| cpu::ssd_chunked(black_box(&inp), dims, 128).unwrap())
    });
    g.finish();

    let mut state = vec(&mut r, H * P * N, -1.0, 1.0);
    let upd = SsmUpdateDims {
        batch: 1,
        heads: H,
        head_dim: P,
        groups: G,
        state: N,
    };
    let mut g = c.benchmark_group("ssm_state_update_B1");
    g.throughput(Throughput::Elements((4 * H * P * N) as u64));
    g.bench_function("step", |b| {
        b.iter(|| {
            cpu::ssm_state_update(
                &mut state,
                &x[..H * P],
                &dt[..H],
                &dt_bias,
                &a_log,
                &bm[..N],
                &cm[..N],
                Some(&d),
                None,
                (0.0, f32::INFINITY),
                upd,
            )
            .unwrap()
        })
    });
    g.finish();
}

fn bench_attention_conv_norm(c: &mut Criterion) {
    let mut r = StdRng::seed_from_u64(2);
    let (t, hq, hkv, hd) = (256usize, 8usize, 2usize, 64usize);
    let q = vec(&mut r, t * hq * hd, -1.0, 1.0);
    let k = vec(&mut r, t * hkv * hd, -1.0, 1.0);
    let v = vec(&mut r, t * hkv * hd, -1.0, 1.0);
    let dims = AttnDims {
        n_heads: hq,
        n_kv_heads: hkv,
        head_dim: hd,
    };
    let mut g = c.benchmark_group("attention_8x2x64");
    // Causal: ~T^2/2 score/value pairs, 4 FLOP each per head dim.
    g.throughput(Throughput::Elements((2 * t * t * hq * hd) as u64));
    g.bench_function("prefill_T256", |b| {
        b.iter(|| cpu::causal_attention(black_box(&q), &k, &v, 0, dims).unwrap())
    });
    g.finish();

    let x = vec(&mut r, t * CONV_DIM, -1.0, 1.0);
    let w = vec(&mut r, CONV_DIM * 4, -0.5, 0.5);
    let bias = vec(&mut r, CONV_DIM, -0.5, 0.5);
    let mut g = c.benchmark_group("conv1d_C1792_K4");
    g.throughput(Throughput::Elements((2 * 4 * t * CONV_DIM) as u64));
    g.bench_function("prefill_T256", |b| {
        b.iter(|| {
            cpu::causal_conv1d(black_box(&x), &w, Some(&bias), None, CONV_DIM, 4, true).unwrap()
        })
    });
    g.finish();

    let xn = vec(&mut r, t * D, -1.0, 1.0);
    let wn = vec(&mut r, D, 0.5, 1.5);
    let mut g = c.benchmark_group("rms_norm_d1024");
    g.throughput(Throughput::Elements((3 * t * D) as u64));
    g.bench_function("T256", |b| {
        b.iter(|| cpu::rms_norm(black_box(&xn), &wn, 1e-5).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bench_linear, bench_ssd, bench_attention_conv_norm
}
criterion_main!(benches);
