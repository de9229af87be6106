//! Integration tests of the CPU reference ops: each op against a hand or naive computation, the
//! chunked SSD against the recurrence, split calls against one call, and shape errors.

use falcon_h1_kernels::cpu::{self, AttnDims, SsdDims, SsdInputs, SsmUpdateDims};
use falcon_h1_kernels::tensor::rel_l2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Standard normal via Box-Muller (rand 0.9 has no normal distribution without rand_distr).
fn randn(r: &mut StdRng) -> f32 {
    let u1: f64 = r.random_range(1e-12..1.0);
    let u2: f64 = r.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn randn_vec(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| randn(r)).collect()
}

fn uniform_vec(r: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = rel_l2(got, want);
    assert!(e < tol, "{name}: rel_l2 {e:e} >= {tol:e}");
}

fn assert_err_names<T: std::fmt::Debug>(r: falcon_h1_kernels::error::Result<T>, needles: &[&str]) {
    let msg = r.expect_err("expected an error").to_string();
    for n in needles {
        assert!(msg.contains(n), "error `{msg}` does not mention `{n}`");
    }
}

// ---------------------------------------------------------------- linear / mlp / embedding

fn naive_linear(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * n];
    for r in 0..rows {
        for o in 0..n {
            let mut s = 0f64;
            for i in 0..k {
                s += x[r * k + i] as f64 * w[o * k + i] as f64;
            }
            y[r * n + o] = s as f32;
        }
    }
    y
}

#[test]
fn linear_matches_naive() {
    let mut r = rng(1);
    // Small (serial gemm), odd sizes, one row (gemv) and a large one (rayon gemm).
    for &(rows, k, n) in &[(1, 7, 5), (3, 33, 17), (1, 256, 300), (64, 128, 192)] {
        let x = randn_vec(&mut r, rows * k);
        let w = randn_vec(&mut r, n * k);
        let y = cpu::linear(&x, &w, rows, k, n).unwrap();
        assert_close("linear", &y, &naive_linear(&x, &w, rows, k, n), 1e-6);
    }
    assert_err_names(
        cpu::linear(&[0.0; 5], &[0.0; 6], 1, 6, 1),
        &["linear", "`x`", "in=6"],
    );
    assert_err_names(
        cpu::linear(&[0.0; 6], &[0.0; 5], 1, 6, 1),
        &["linear", "`w`"],
    );
    assert_err_names(cpu::linear(&[], &[], 0, 6, 1), &["rows"]);
}

#[test]
fn mlp_matches_hand_computation() {
    let mut r = rng(2);
    let (rows, d, inter) = (3, 8, 12);
    let x = randn_vec(&mut r, rows * d);
    let wg = randn_vec(&mut r, inter * d);
    let wu = randn_vec(&mut r, inter * d);
    let wd = randn_vec(&mut r, d * inter);
    let m = [0.88f32, 0.58];
    let y = cpu::mlp(&x, &wg, &wu, &wd, rows, d, inter, m).unwrap();
    let g = naive_linear(&x, &wg, rows, d, inter);
    let u = naive_linear(&x, &wu, rows, d, inter);
    let h: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(&g, &u)| u * cpu::silu(g * m[0]))
        .collect();
    let want: Vec<f32> = naive_linear(&h, &wd, rows, inter, d)
        .iter()
        .map(|v| v * m[1])
        .collect();
    assert_close("mlp", &y, &want, 1e-5);
    let sw = cpu::swiglu(&g, &u).unwrap();
    assert_eq!(sw[0], u[0] * cpu::silu(g[0]));
    assert_err_names(
        cpu::mlp(&x, &wg, &wu, &wd[1..], rows, d, inter, m),
        &["w_down"],
    );
    assert_err_names(cpu::swiglu(&g, &u[1..]), &["swiglu", "`up`"]);
}

#[test]
fn embedding_and_lm_head() {
    let table: Vec<f32> = (0..12).map(|v| v as f32).collect(); // V=4, dim=3
    let e = cpu::embedding(&[2, 0], &table, 3, 2.0).unwrap();
    assert_eq!(e, vec![12.0, 14.0, 16.0, 0.0, 2.0, 4.0]);
    assert_err_names(
        cpu::embedding(&[1, 4], &table, 3, 1.0),
        &["embedding", "4", "position 1", "vocab size 4"],
    );
    assert_err_names(
        cpu::embedding(&[1], &table[1..], 3, 1.0),
        &["embedding", "`table`"],
    );
    let x = [1.0f32, 0.0, -1.0];
    let l = cpu::lm_head(&x, &table, 1, 3, 4, 0.5).unwrap();
    assert_eq!(l, vec![-1.0, -1.0, -1.0, -1.0]);
    assert_err_names(
        cpu::lm_head(&x, &table, 1, 3, 5, 0.5),
        &["lm_head", "`w`", "vocab=5"],
    );
}

// ---------------------------------------------------------------- norms

#[test]
fn rms_norm_hand_computation() {
    let x = [3.0f32, 4.0, 0.0, 0.0, 1.0, -1.0];
    let w = [1.0f32, 2.0, 0.5];
    let eps = 1e-5f32;
    let y = cpu::rms_norm(&x, &w, eps).unwrap();
    let r0 = 1.0 / ((25.0f32 / 3.0) + eps).sqrt();
    let r1 = 1.0 / ((2.0f32 / 3.0) + eps).sqrt();
    let want = [3.0 * r0, 8.0 * r0, 0.0, 0.0, 2.0 * r1, -0.5 * r1];
    assert_close("rms_norm", &y, &want, 1e-6);

    let mut res = [1.0f32, 2.0, -1.0, 0.0, 0.5, -0.5];
    let delta = [2.0f32, 2.0, 1.0, 0.0, 0.5, -0.5];
    let y2 = cpu::add_rms_norm(&mut res, &delta, &w, eps).unwrap();
    assert_eq!(res, x);
    assert_eq!(y2, y);
    assert_err_names(cpu::rms_norm(&x[..5], &w, eps), &["rms_norm", "`x`", "d=3"]);
    assert_err_names(
        cpu::add_rms_norm(&mut res, &delta[..3], &w, eps),
        &["add_rms_norm", "`delta`"],
    );
}

#[test]
fn gated_rms_norm_two_groups_by_hand() {
    let mut r = rng(3);
    let (rows, ds, g) = (3, 8, 2);
    let y = randn_vec(&mut r, rows * ds);
    let z = randn_vec(&mut r, rows * ds);
    let w = uniform_vec(&mut r, ds, 0.5, 1.5);
    let eps = 1e-6f32;
    for before in [false, true] {
        let got = cpu::gated_rms_norm(&y, &z, &w, g, eps, before).unwrap();
        let mut want = vec![0f32; rows * ds];
        for row in 0..rows {
            for grp in 0..g {
                let idx: Vec<usize> = (0..ds / g).map(|i| row * ds + grp * (ds / g) + i).collect();
                let h: Vec<f64> = idx
                    .iter()
                    .map(|&i| {
                        let v = y[i] as f64;
                        if before {
                            v
                        } else {
                            v * cpu::silu(z[i]) as f64
                        }
                    })
                    .collect();
                let var = h.iter().map(|v| v * v).sum::<f64>() / h.len() as f64;
                let inv = 1.0 / (var + eps as f64).sqrt();
                for (k, &i) in idx.iter().enumerate() {
                    let mut o = h[k] * inv * w[i % ds] as f64;
                    if before {
                        o *= cpu::silu(z[i]) as f64;
                    }
                    want[i] = o as f32;
                }
            }
        }
        assert_close("gated_rms_norm", &got, &want, 1e-6);
    }
    // Per-group, not whole-row: a single group gives a different answer.
    let one = cpu::gated_rms_norm(&y, &z, &w, 1, eps, false).unwrap();
    let two = cpu::gated_rms_norm(&y, &z, &w, 2, eps, false).unwrap();
    assert!(rel_l2(&one, &two) > 1e-3);
    assert_err_names(
        cpu::gated_rms_norm(&y, &z[1..], &w, g, eps, false),
        &["gated_rms_norm", "`z`"],
    );
    assert_err_names(cpu::gated_rms_norm(&y, &z, &w, 3, eps, false), &["G=3"]);
    assert_err_names(cpu::gated_rms_norm(&y, &z, &w, 0, eps, false), &["G"]);
    let sg = cpu::silu_gate(&y, &z).unwrap();
    assert_eq!(sg[1], y[1] * cpu::silu(z[1]));
    assert_err_names(cpu::silu_gate(&y, &z[1..]), &["silu_gate", "`z`"]);
}

// ---------------------------------------------------------------- rope

#[test]
fn rope_identity_at_zero_and_preserves_pair_norms() {
    let mut r = rng(4);
    let (t, h, hd) = (5, 3, 16);
    let x = randn_vec(&mut r, t * h * hd);
    let mut y = x.clone();
    cpu::rope_neox(&mut y, &[0, 1, 7, 100, 16000], h, hd, 1e11).unwrap();
    assert_eq!(
        &y[..h * hd],
        &x[..h * hd],
        "position 0 must be the identity"
    );
    let half = hd / 2;
    for ti in 0..t {
        for hi in 0..h {
            let base = (ti * h + hi) * hd;
            for i in 0..half {
                let n0 = x[base + i].hypot(x[base + i + half]);
                let n1 = y[base + i].hypot(y[base + i + half]);
                assert!((n0 - n1).abs() <= 1e-5 * n0.max(1.0), "pair norm changed");
            }
        }
    }
    // Pair 0 rotates by exactly `pos` radians (inv_freq[0] = 1).
    let inv = cpu::rope_inv_freq(hd, 1e11);
    assert_eq!(inv[0], 1.0);
    assert!((inv[1] - (1e11f64).powf(-2.0 / 16.0) as f32).abs() < 1e-9);
    let (a, b) = (x[h * hd], x[h * hd + half]);
    let (c, s) = (1f32.cos(), 1f32.sin());
    assert!((y[h * hd] - (a * c - b * s)).abs() < 1e-6);
    assert!((y[h * hd + half] - (b * c + a * s)).abs() < 1e-6);

    assert_err_names(
        cpu::rope_neox(&mut y[1..], &[0, 1, 2, 3, 4], h, hd, 1e4),
        &["rope_neox", "`x`"],
    );
    assert_err_names(
        cpu::rope_neox(&mut y, &[0; 5], h * 2, hd / 2 - 1, 1e4),
        &["head_dim"],
    );
}

// ---------------------------------------------------------------- attention

fn attn_naive(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_offset: usize,
    hq: usize,
    hkv: usize,
    hd: usize,
) -> Vec<f32> {
    let tq = q.len() / (hq * hd);
    let mut out = vec![0f32; q.len()];
    for t in 0..tq {
        for h in 0..hq {
            let kh = h / (hq / hkv);
            let n = q_offset + t + 1;
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    (0..hd)
                        .map(|i| {
                            q[(t * hq + h) * hd + i] as f64 * k[(j * hkv + kh) * hd + i] as f64
                        })
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = p.iter().sum();
            for i in 0..hd {
                out[(t * hq + h) * hd + i] = ((0..n)
                    .map(|j| p[j] * v[(j * hkv + kh) * hd + i] as f64)
                    .sum::<f64>()
                    / z) as f32;
            }
        }
    }
    out
}

#[test]
fn attention_split_gqa_and_naive() {
    let mut r = rng(5);
    let (t, hq, hkv, hd) = (23, 4, 2, 16);
    let q = randn_vec(&mut r, t * hq * hd);
    let k = randn_vec(&mut r, t * hkv * hd);
    let v = randn_vec(&mut r, t * hkv * hd);
    let dims = AttnDims {
        n_heads: hq,
        n_kv_heads: hkv,
        head_dim: hd,
    };
    let full = cpu::causal_attention(&q, &k, &v, 0, dims).unwrap();
    assert_close(
        "attention vs f64",
        &full,
        &attn_naive(&q, &k, &v, 0, hq, hkv, hd),
        1e-6,
    );

    // Prefill the first part, then the rest with q_offset (keys of the whole sequence so far).
    let split = 9;
    let kv_row = hkv * hd;
    let a = cpu::causal_attention(
        &q[..split * hq * hd],
        &k[..split * kv_row],
        &v[..split * kv_row],
        0,
        dims,
    )
    .unwrap();
    let b = cpu::causal_attention(&q[split * hq * hd..], &k, &v, split, dims).unwrap();
    let joined = [a, b].concat();
    assert_close("attention split", &joined, &full, 1e-6);
    // One decode step at the end.
    let last = cpu::causal_attention(&q[(t - 1) * hq * hd..], &k, &v, t - 1, dims).unwrap();
    assert_close("attention decode", &last, &full[(t - 1) * hq * hd..], 1e-6);

    // GQA == MHA with every kv head repeated (repeat_interleave over heads).
    let rep = |src: &[f32]| {
        let mut o = Vec::with_capacity(t * hq * hd);
        for ti in 0..t {
            for h in 0..hq {
                let kh = h / (hq / hkv);
                o.extend_from_slice(&src[(ti * hkv + kh) * hd..][..hd]);
            }
        }
        o
    };
    let mha = cpu::causal_attention(
        &q,
        &rep(&k),
        &rep(&v),
        0,
        AttnDims {
            n_heads: hq,
            n_kv_heads: hq,
            head_dim: hd,
        },
    )
    .unwrap();
    assert_close("gqa vs mha", &full, &mha, 1e-7);

    assert_err_names(
        cpu::causal_attention(&q, &k, &v[1..], 0, dims),
        &["causal_attention", "`v`", "Tk=23"],
    );
    assert_err_names(
        cpu::causal_attention(&q, &k[..kv_row * 5], &v[..kv_row * 5], 0, dims),
        &["`k`", "positions"],
    );
    assert_err_names(cpu::causal_attention(&q[1..], &k, &v, 0, dims), &["`q`"]);
    assert_err_names(
        cpu::causal_attention(
            &q,
            &k,
            &v,
            0,
            AttnDims {
                n_heads: 3,
                n_kv_heads: 2,
                head_dim: hd,
            },
        ),
        &["Hq=3", "Hkv=2"],
    );
    assert_err_names(
        cpu::causal_attention(&q, &k, &v, usize::MAX, dims),
        &["q_offset"],
    );
}

#[test]
fn attention_large_scores_stay_finite() {
    // Scores near 1e4 overflow exp without the max subtraction.
    let hd = 4;
    let q = vec![100.0f32; 2 * hd];
    let k = vec![100.0f32; 2 * hd];
    let v: Vec<f32> = (0..2 * hd).map(|i| i as f32).collect();
    let dims = AttnDims {
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: hd,
    };
    let o = cpu::causal_attention(&q, &k, &v, 0, dims).unwrap();
    assert!(o.iter().all(|v| v.is_finite()));
    assert_close("uniform softmax", &o[hd..], &[2.0, 3.0, 4.0, 5.0], 1e-6);
}

// ---------------------------------------------------------------- conv

#[test]
fn conv_split_and_update_match_one_shot() {
    let mut r = rng(6);
    let c = 5;
    for width in [2usize, 3, 4] {
        for &t in &[1usize, 2, 7, 20] {
            let x = randn_vec(&mut r, t * c);
            let w = randn_vec(&mut r, c * width);
            let bias = randn_vec(&mut r, c);
            let s0 = randn_vec(&mut r, c * (width - 1));
            for silu in [false, true] {
                let (full, fs) =
                    cpu::causal_conv1d(&x, &w, Some(&bias), Some(&s0), c, width, silu).unwrap();
                // Hand check of the first output: state then x_0, w[.., K-1] on the current token.
                for ch in 0..c {
                    let mut acc = bias[ch];
                    for j in 0..width - 1 {
                        acc += w[ch * width + j] * s0[ch * (width - 1) + j];
                    }
                    acc += w[ch * width + width - 1] * x[ch];
                    let want = if silu { cpu::silu(acc) } else { acc };
                    assert!((full[ch] - want).abs() < 1e-5);
                }
                // Two pieces with the state carried (first piece may be shorter than K-1).
                for split in 1..t {
                    let (a, sa) = cpu::causal_conv1d(
                        &x[..split * c],
                        &w,
                        Some(&bias),
                        Some(&s0),
                        c,
                        width,
                        silu,
                    )
                    .unwrap();
                    let (b, sb) = cpu::causal_conv1d(
                        &x[split * c..],
                        &w,
                        Some(&bias),
                        Some(&sa),
                        c,
                        width,
                        silu,
                    )
                    .unwrap();
                    assert_close("conv split", &[a, b].concat(), &full, 1e-6);
                    assert_eq!(sb, fs);
                }
                // Step by step with the update op, batch 2 (second sequence a scaled copy).
                let mut st = [s0.clone(), s0.iter().map(|v| v * 2.0).collect()].concat();
                let mut steps = Vec::new();
                for ti in 0..t {
                    let xb = [
                        x[ti * c..][..c].to_vec(),
                        x[ti * c..][..c].iter().map(|v| v * 2.0).collect(),
                    ]
                    .concat();
                    let o =
                        cpu::causal_conv1d_update(&xb, &mut st, &w, Some(&bias), 2, c, width, silu)
                            .unwrap();
                    steps.extend_from_slice(&o[..c]);
                }
                assert_close("conv update", &steps, &full, 1e-6);
                assert_eq!(&st[..c * (width - 1)], &fs[..]);
            }
        }
    }
    // No state means zeros; no bias means zero bias.
    let x = randn_vec(&mut r, 3 * c);
    let w = randn_vec(&mut r, c * 4);
    let (a, st) = cpu::causal_conv1d(&x, &w, None, None, c, 4, false).unwrap();
    let (b, _) =
        cpu::causal_conv1d(&x, &w, Some(&[0.0; 5]), Some(&[0.0; 15]), c, 4, false).unwrap();
    assert_eq!(a, b);
    // T = K-1: the final state of channel 0 is exactly its three inputs.
    assert_eq!(&st[..3], &[x[0], x[c], x[2 * c]]);
    // T < K-1: the final state still holds carried values, oldest dropped first.
    let s0: Vec<f32> = (0..3 * c).map(|v| v as f32).collect();
    let (_, st1) = cpu::causal_conv1d(&x[..c], &w, None, Some(&s0), c, 4, false).unwrap();
    assert_eq!(&st1[..3], &[1.0, 2.0, x[0]]);

    assert_err_names(
        cpu::causal_conv1d(&x, &w[1..], None, None, c, 4, false),
        &["causal_conv1d", "`weight`", "K=4"],
    );
    assert_err_names(
        cpu::causal_conv1d(&x, &w, None, Some(&[0.0; 14]), c, 4, false),
        &["`state`", "K-1=3"],
    );
    assert_err_names(
        cpu::causal_conv1d(&x, &w, Some(&[0.0; 4]), None, c, 4, false),
        &["`bias`"],
    );
    let mut s = vec![0f32; 2 * c * 3];
    assert_err_names(
        cpu::causal_conv1d_update(&x[..c], &mut s, &w, None, 2, c, 4, false),
        &["causal_conv1d_update", "`x`", "B=2"],
    );
    assert_err_names(
        cpu::causal_conv1d_update(&x[..2 * c], &mut s[1..], &w, None, 2, c, 4, false),
        &["`state`"],
    );
    assert_err_names(cpu::causal_conv1d(&x, &w, None, None, c, 0, false), &["K"]);
}

// ---------------------------------------------------------------- ssd

struct SsdCase {
    x: Vec<f32>,
    dt: Vec<f32>,
    dt_bias: Vec<f32>,
    a_log: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    s0: Vec<f32>,
    dims: SsdDims,
}

impl SsdCase {
    fn new(seed: u64, t: usize, h: usize, p: usize, g: usize, n: usize) -> Self {
        let mut r = rng(seed);
        Self {
            x: randn_vec(&mut r, t * h * p),
            // softplus(randn - 4 + bias) keeps dt small, as in trained models.
            dt: randn_vec(&mut r, t * h).iter().map(|v| v - 4.0).collect(),
            dt_bias: uniform_vec(&mut r, h, -1.0, 1.0),
            a_log: uniform_vec(&mut r, h, -1.0, 2.0),
            b: randn_vec(&mut r, t * g * n),
            c: randn_vec(&mut r, t * g * n),
            d: randn_vec(&mut r, h),
            s0: randn_vec(&mut r, h * p * n),
            dims: SsdDims {
                seqlen: t,
                heads: h,
                head_dim: p,
                groups: g,
                state: n,
            },
        }
    }

    fn inputs(&self, with_d: bool, with_s0: bool) -> SsdInputs<'_> {
        SsdInputs {
            x: &self.x,
            dt: &self.dt,
            dt_bias: &self.dt_bias,
            a_log: &self.a_log,
            b: &self.b,
            c: &self.c,
            d: with_d.then_some(&self.d[..]),
            dt_limit: (0.0, f32::INFINITY),
            initial_state: with_s0.then_some(&self.s0[..]),
        }
    }
}

#[test]
fn ssd_chunked_equals_recurrent() {
    // (T, chunk, H, P, G, N)
    let cases = [
        (37, 8, 4, 8, 2, 16),      // chunk does not divide T, G=2
        (1, 8, 4, 8, 2, 16),       // T=1
        (32, 32, 2, 4, 1, 8),      // T == chunk
        (64, 16, 3, 5, 1, 7),      // several full chunks, odd dims
        (50, 128, 2, 4, 2, 8),     // chunk larger than T
        (300, 128, 4, 64, 2, 128), // release-like P, N, chunk; last chunk short
    ];
    for (i, &(t, q, h, p, g, n)) in cases.iter().enumerate() {
        let case = SsdCase::new(100 + i as u64, t, h, p, g, n);
        for with_d in [false, true] {
            for with_s0 in [false, true] {
                let inp = case.inputs(with_d, with_s0);
                let (yr, sr) = cpu::ssd_recurrent(&inp, case.dims).unwrap();
                let (yc, sc) = cpu::ssd_chunked(&inp, case.dims, q).unwrap();
                let tag = format!("T={t} Q={q} G={g} D={with_d} s0={with_s0}");
                assert_close(&format!("ssd y {tag}"), &yc, &yr, 1e-5);
                assert_close(&format!("ssd state {tag}"), &sc, &sr, 1e-5);
            }
        }
    }
}

#[test]
fn ssd_recurrent_by_hand_and_dt_limit() {
    // One head, P=1, N=1, two steps.
    let (dt_raw, bias, a_log) = (0.3f32, 0.2f32, 0.5f32);
    let inp = SsdInputs {
        x: &[1.5, -2.0],
        dt: &[dt_raw, dt_raw],
        dt_bias: &[bias],
        a_log: &[a_log],
        b: &[0.7, 1.1],
        c: &[-0.4, 0.9],
        d: Some(&[0.25]),
        dt_limit: (0.0, f32::INFINITY),
        initial_state: Some(&[0.6]),
    };
    let dims = SsdDims {
        seqlen: 2,
        heads: 1,
        head_dim: 1,
        groups: 1,
        state: 1,
    };
    let (y, s) = cpu::ssd_recurrent(&inp, dims).unwrap();
    let dt = ((dt_raw + bias) as f64).exp().ln_1p();
    let da = (-dt * (a_log as f64).exp()).exp();
    let s1 = da * 0.6 + dt * 1.5 * 0.7;
    let s2 = da * s1 + dt * -2.0 * 1.1;
    let want_y = [
        (s1 * -0.4 + 0.25 * 1.5) as f32,
        (s2 * 0.9 + 0.25 * -2.0) as f32,
    ];
    assert_close("ssd hand y", &y, &want_y, 1e-6);
    assert_close("ssd hand state", &s, &[s2 as f32], 1e-6);

    // A dt_limit hi below softplus output clamps dt; both algorithms agree on it.
    let case = SsdCase::new(7, 20, 2, 4, 1, 8);
    let mut inp = case.inputs(true, true);
    inp.dt_limit = (0.001, 0.01);
    let (yr, _) = cpu::ssd_recurrent(&inp, case.dims).unwrap();
    let (yc, _) = cpu::ssd_chunked(&inp, case.dims, 6).unwrap();
    assert_close("ssd dt_limit", &yc, &yr, 1e-5);
    let (yn, _) = cpu::ssd_recurrent(&case.inputs(true, true), case.dims).unwrap();
    assert!(rel_l2(&yn, &yr) > 1e-3, "dt_limit had no effect");
    inp.dt_limit = (1.0, 0.5);
    assert_err_names(cpu::ssd_recurrent(&inp, case.dims), &["dt_limit"]);
}

#[test]
fn ssd_extreme_decay_stays_finite() {
    // Huge dt*A: decays underflow to 0, nothing may become NaN or inf.
    let mut case = SsdCase::new(8, 40, 2, 4, 1, 8);
    case.dt.iter_mut().for_each(|v| *v = 30.0);
    case.a_log = vec![3.0, 2.0];
    let inp = case.inputs(true, true);
    let (yr, sr) = cpu::ssd_recurrent(&inp, case.dims).unwrap();
    let (yc, sc) = cpu::ssd_chunked(&inp, case.dims, 16).unwrap();
    assert!(yc.iter().chain(&sc).all(|v| v.is_finite()));
    assert_close("ssd extreme y", &yc, &yr, 1e-5);
    assert_close("ssd extreme state", &sc, &sr, 1e-5);
}

#[test]
fn ssd_two_calls_equal_one() {
    let case = SsdCase::new(9, 45, 4, 8, 2, 16);
    let SsdDims {
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
        ..
    } = case.dims;
    let full_inp = case.inputs(true, true);
    let (y_full, s_full) = cpu::ssd_chunked(&full_inp, case.dims, 8).unwrap();
    let split = 19;
    let part = |lo: usize, hi: usize, s0: &'_ [f32]| {
        let inp = SsdInputs {
            x: &case.x[lo * h * p..hi * h * p],
            dt: &case.dt[lo * h..hi * h],
            b: &case.b[lo * g * n..hi * g * n],
            c: &case.c[lo * g * n..hi * g * n],
            initial_state: Some(s0),
            ..full_inp
        };
        let dims = SsdDims {
            seqlen: hi - lo,
            ..case.dims
        };
        (
            cpu::ssd_chunked(&inp, dims, 8).unwrap(),
            cpu::ssd_recurrent(&inp, dims).unwrap(),
        )
    };
    let ((ya, sa), (ya_r, sa_r)) = part(0, split, &case.s0);
    assert_close("first half chunked vs recurrent", &ya, &ya_r, 1e-5);
    assert_close("first half state", &sa, &sa_r, 1e-5);
    let ((yb, sb), _) = part(split, 45, &sa);
    assert_close("ssd split y", &[ya, yb].concat(), &y_full, 1e-5);
    assert_close("ssd split state", &sb, &s_full, 1e-5);
}

#[test]
fn ssm_state_update_steps_equal_recurrent() {
    // Batch 2, two different sequences, stepped token by token from their initial states.
    let (t, h, p, g, n) = (12, 4, 4, 2, 8);
    let seqs = [
        SsdCase::new(20, t, h, p, g, n),
        SsdCase::new(21, t, h, p, g, n),
    ];
    // Same per-head parameters for the batch (they belong to the layer).
    let (dt_bias, a_log, d) = (&seqs[0].dt_bias, &seqs[0].a_log, &seqs[0].d);
    let mut state = [seqs[0].s0.clone(), seqs[1].s0.clone()].concat();
    let mut zr = rng(22);
    let z = randn_vec(&mut zr, 2 * t * h * p);
    let dims = SsmUpdateDims {
        batch: 2,
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
    };
    let mut ys = [Vec::new(), Vec::new()];
    let mut ys_gated = [Vec::new(), Vec::new()];
    let mut gated_state = state.clone();
    for ti in 0..t {
        let cat = |f: &dyn Fn(&SsdCase) -> &[f32], w: usize| -> Vec<f32> {
            seqs.iter()
                .flat_map(|s| f(s)[ti * w..(ti + 1) * w].to_vec())
                .collect()
        };
        let x = cat(&|s| &s.x, h * p);
        let dt = cat(&|s| &s.dt, h);
        let b = cat(&|s| &s.b, g * n);
        let c = cat(&|s| &s.c, g * n);
        let y = cpu::ssm_state_update(
            &mut state,
            &x,
            &dt,
            dt_bias,
            a_log,
            &b,
            &c,
            Some(d),
            None,
            (0.0, f32::INFINITY),
            dims,
        )
        .unwrap();
        let zt: Vec<f32> = (0..2)
            .flat_map(|bi| z[(bi * t + ti) * h * p..][..h * p].to_vec())
            .collect();
        let yg = cpu::ssm_state_update(
            &mut gated_state,
            &x,
            &dt,
            dt_bias,
            a_log,
            &b,
            &c,
            Some(d),
            Some(&zt),
            (0.0, f32::INFINITY),
            dims,
        )
        .unwrap();
        for bi in 0..2 {
            ys[bi].extend_from_slice(&y[bi * h * p..][..h * p]);
            ys_gated[bi].extend_from_slice(&yg[bi * h * p..][..h * p]);
        }
    }
    for (bi, s) in seqs.iter().enumerate() {
        let inp = SsdInputs {
            dt_bias,
            a_log,
            d: Some(d),
            ..s.inputs(true, true)
        };
        let (yr, sr) = cpu::ssd_recurrent(&inp, s.dims).unwrap();
        assert_close("state update y", &ys[bi], &yr, 1e-6);
        assert_close(
            "state update state",
            &state[bi * h * p * n..][..h * p * n],
            &sr,
            1e-6,
        );
        let want_g: Vec<f32> = yr
            .iter()
            .zip(&z[bi * t * h * p..][..t * h * p])
            .map(|(&y, &zz)| y * cpu::silu(zz))
            .collect();
        assert_close("state update gated", &ys_gated[bi], &want_g, 1e-6);
    }
    let mut st = vec![0f32; 2 * h * p * n];
    let x = vec![0f32; 2 * h * p];
    let dtv = vec![0f32; 2 * h];
    let bc = vec![0f32; 2 * g * n];
    assert_err_names(
        cpu::ssm_state_update(
            &mut st[1..],
            &x,
            &dtv,
            dt_bias,
            a_log,
            &bc,
            &bc,
            None,
            None,
            (0.0, f32::INFINITY),
            dims,
        ),
        &["ssm_state_update", "`state`", "N=8"],
    );
    assert_err_names(
        cpu::ssm_state_update(
            &mut st,
            &x,
            &dtv,
            dt_bias,
            a_log,
            &bc[1..],
            &bc,
            None,
            None,
            (0.0, f32::INFINITY),
            dims,
        ),
        &["`b`"],
    );
    assert_err_names(
        cpu::ssm_state_update(
            &mut st,
            &x,
            &dtv,
            dt_bias,
            a_log,
            &bc,
            &bc,
            None,
            Some(&x[1..]),
            (0.0, f32::INFINITY),
            dims,
        ),
        &["`z`"],
    );
}

#[test]
fn ssd_shape_errors() {
    let case = SsdCase::new(30, 10, 2, 4, 1, 8);
    let mut inp = case.inputs(true, true);
    inp.x = &case.x[1..];
    assert_err_names(
        cpu::ssd_chunked(&inp, case.dims, 4),
        &["ssd_chunked", "`x`", "T=10, H=2, P=4"],
    );
    let mut inp = case.inputs(true, true);
    inp.c = &case.c[1..];
    assert_err_names(
        cpu::ssd_recurrent(&inp, case.dims),
        &["ssd_recurrent", "`c`"],
    );
    let mut inp = case.inputs(true, true);
    inp.initial_state = Some(&case.s0[1..]);
    assert_err_names(cpu::ssd_chunked(&inp, case.dims, 4), &["`initial_state`"]);
    let inp = case.inputs(true, true);
    assert_err_names(cpu::ssd_chunked(&inp, case.dims, 0), &["chunk_size"]);
    assert_err_names(
        cpu::ssd_chunked(
            &inp,
            SsdDims {
                groups: 3,
                ..case.dims
            },
            4,
        ),
        &["H=2", "G=3"],
    );
    assert_err_names(
        cpu::ssd_chunked(
            &inp,
            SsdDims {
                seqlen: 0,
                ..case.dims
            },
            4,
        ),
        &["T"],
    );
}

#[test]
fn ssd_groups_are_repeat_interleaved() {
    // H=4, G=2: heads 0,1 read group 0 and heads 2,3 group 1. With group 1's B zeroed and no
    // initial state, heads 2,3 must produce exactly zero (no D) and heads 0,1 must not.
    let mut case = SsdCase::new(40, 9, 4, 3, 2, 5);
    let n = 5;
    for t in 0..9 {
        case.b[(t * 2 + 1) * n..][..n].fill(0.0);
    }
    let inp = case.inputs(false, false);
    for (y, _) in [
        cpu::ssd_recurrent(&inp, case.dims).unwrap(),
        cpu::ssd_chunked(&inp, case.dims, 4).unwrap(),
    ] {
        for t in 0..9 {
            for h in 0..4 {
                let row = &y[(t * 4 + h) * 3..][..3];
                if h >= 2 {
                    assert!(row.iter().all(|&v| v == 0.0), "head {h} read group 0");
                } else {
                    assert!(row.iter().any(|&v| v != 0.0), "head {h} read group 1");
                }
            }
        }
    }
}
