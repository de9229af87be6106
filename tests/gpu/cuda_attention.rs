//! The attention kernels (kernels/kv_append.cu, kernels/attention_prefill.cu,
//! kernels/attention_decode.cu) through `Gpu::kv_append`, `Gpu::attention_prefill_into` and
//! `Gpu::attention_decode_into`, against the CPU. Built only with `--features cuda` and meant for
//! a GPU machine: without a GPU every test here fails, saying so. Outputs are poisoned with NaN
//! before every launch.
//!
//! Attention is checked on exactly the inputs the kernels see (q and the cache are downloaded
//! after the append) against two references: `cpu::causal_attention` in f32 (the truth), and a
//! CPU emulation of a half-precision flash kernel (T inputs, f32 scores, P rounded to T before
//! P.V, output rounded to T). A kernel passes when its rel L2 error against the truth is at most
//! twice the emulation's (plus 1e-6); NaN never passes. f32 kernels must be within 1e-5.
//! kv_append is checked against `cpu::rope_neox` and plain copies.

use crate::common;

use common::gpu_check::{compare, gpu, to_f32, to_t};

use falcon_h1_kernels::cpu::{self, AttnDims};
use falcon_h1_kernels::cuda::attention::{AttnDtype, DecodeScratch, GpuKvCache};
use falcon_h1_kernels::cuda::conv1d::Strided;
use falcon_h1_kernels::cuda::Gpu;
use falcon_h1_kernels::tensor::rel_l2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

const THETA: f64 = 10_000.0;

/// Values rounded to `T` (returned as f32).
fn draw<T: AttnDtype>(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| T::from_f32(rng.random_range(-scale..scale)).to_f32())
        .collect()
}

fn round<T: AttnDtype>(v: f32) -> f32 {
    T::from_f32(v).to_f32()
}

/// Head counts of one case.
#[derive(Clone, Copy, Debug)]
struct Heads {
    hq: usize,
    hkv: usize,
    hd: usize,
}

impl Heads {
    fn dims(self) -> AttnDims {
        AttnDims {
            n_heads: self.hq,
            n_kv_heads: self.hkv,
            head_dim: self.hd,
        }
    }
}

/// What a half-precision flash kernel computes, on the CPU: `q [Tq, Hq, hd]`, `k, v [Tk, Hkv,
/// hd]` (T values), f32 scores scaled by 1/sqrt(hd), p = exp(s - max) in f32, l = sum p in f32,
/// o = sum round_T(p) v / l in f32, rounded to T.
fn emulated_attention<T: AttnDtype>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_offset: usize,
    h: Heads,
) -> Vec<f32> {
    let (hq, hkv, hd) = (h.hq, h.hkv, h.hd);
    let rep = hq / hkv;
    let tq = q.len() / (hq * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; tq * hq * hd];
    out.par_chunks_mut(hd)
        .enumerate()
        .for_each_init(Vec::new, |sc: &mut Vec<f32>, (idx, o)| {
            let (t, head) = (idx / hq, idx % hq);
            let g = head / rep;
            let qv = &q[(t * hq + head) * hd..][..hd];
            let n = q_offset + t + 1;
            sc.clear();
            let mut mx = f32::NEG_INFINITY;
            for j in 0..n {
                let kv = &k[(j * hkv + g) * hd..][..hd];
                let s = qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale;
                mx = mx.max(s);
                sc.push(s);
            }
            let mut l = 0f32;
            for (j, &s) in sc.iter().enumerate() {
                let p = (s - mx).exp();
                l += p;
                let pt = round::<T>(p);
                let vv = &v[(j * hkv + g) * hd..][..hd];
                o.iter_mut().zip(vv).for_each(|(a, &b)| *a += pt * b);
            }
            o.iter_mut().for_each(|a| *a = round::<T>(*a / l));
        });
    out
}

/// GPU `got` vs the f32 truth `want`; for half types, no worse than twice the emulated
/// reference `emu`'s error (plus 1e-6); for f32, under 1e-5.
fn check_attn<T: AttnDtype>(
    what: &str,
    got: &[f32],
    want: &[f32],
    emu: Option<&[f32]>,
    cols: usize,
) {
    let tol = match emu {
        Some(e) => {
            let e_emu = rel_l2(e, want);
            println!(
                "{what}: emulated {} reference rel L2 {e_emu:.2e}",
                T::SUFFIX
            );
            2.0 * e_emu + 1e-6
        }
        None => 1e-5,
    };
    compare(what, got, want, cols, tol);
}

/// Rows `0..n` of slot `slot` of a downloaded cache `[slots, cap, Hkv, hd]`.
fn cache_rows(cache: &[f32], slot: usize, n: usize, cap: usize, row: usize) -> &[f32] {
    &cache[slot * cap * row..][..n * row]
}

/// What runs after the append.
enum Attn<'a> {
    /// Nothing (filling the cache).
    AppendOnly,
    Prefill,
    /// The Hopper kernels (`Gpu::attention_prefill_sm90_into`; compute capability 9.0 only).
    PrefillSm90,
    /// The scalar kernel for any head dim (`Gpu::attention_reference_into`).
    Reference,
    Decode(&'a mut DecodeScratch),
}

/// One step on the GPU: upload q, k, v (k and v as column slices of one fused buffer, rows
/// `2 * Hkv * hd + 8` apart), kv_append, then prefill or decode into a NaN-poisoned output.
/// Returns (out, roped q) as f32.
#[allow(clippy::too_many_arguments)]
fn gpu_step<T: AttnDtype>(
    g: &Gpu,
    cache: &mut GpuKvCache<T>,
    inv: &falcon_h1_kernels::cuda::CudaSlice<f32>,
    h: Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: &falcon_h1_kernels::cuda::attention::AttnBatch,
    attn: Attn<'_>,
) -> (Vec<f32>, Vec<f32>) {
    let tokens = batch.tokens();
    let kw = h.hkv * h.hd;
    let stride = 2 * kw + 8;
    let mut fused = vec![f32::NAN; tokens * stride];
    for r in 0..tokens {
        fused[r * stride..][..kw].copy_from_slice(&k[r * kw..][..kw]);
        fused[r * stride + kw..][..kw].copy_from_slice(&v[r * kw..][..kw]);
    }
    let dfused = g.upload(&to_t::<T>(&fused)).unwrap();
    let mut dq = g.upload(&to_t::<T>(q)).unwrap();
    let ks = Strided {
        buf: &dfused,
        offset: 0,
        row_stride: stride,
    };
    let vs = Strided {
        buf: &dfused,
        offset: kw,
        row_stride: stride,
    };
    g.kv_append(&mut dq, ks, vs, inv, cache, batch, h.hq, 1.0)
        .unwrap();
    let mut out = g
        .upload(&vec![T::from_f32(f32::NAN); tokens * h.hq * h.hd])
        .unwrap();
    match attn {
        Attn::Decode(s) => g
            .attention_decode_into(&dq, cache, batch, h.hq, s, &mut out)
            .unwrap(),
        Attn::Prefill => g
            .attention_prefill_mma_into(&dq, cache, batch, h.hq, &mut out)
            .unwrap(),
        Attn::PrefillSm90 => g
            .attention_prefill_sm90_into(&dq, cache, batch, h.hq, &mut out)
            .unwrap(),
        Attn::Reference => g
            .attention_reference_into(&dq, cache, batch, h.hq, &mut out)
            .unwrap(),
        Attn::AppendOnly => {}
    }
    g.synchronize().unwrap();
    (
        to_f32(&g.download(&out).unwrap()),
        to_f32(&g.download(&dq).unwrap()),
    )
}

/// References for every sequence of a step, from the roped q and the downloaded cache:
/// (f32 truth, emulated) each `[tokens, Hq * hd]`.
fn references<T: AttnDtype>(
    g: &Gpu,
    cache: &GpuKvCache<T>,
    h: Heads,
    q: &[f32],
    slots: &[usize],
    lens: &[usize],
    starts: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let keys = to_f32(&g.download(cache.keys()).unwrap());
    let vals = to_f32(&g.download(cache.values()).unwrap());
    let (cap, kvrow, qrow) = (cache.capacity(), h.hkv * h.hd, h.hq * h.hd);
    let mut want = Vec::with_capacity(q.len());
    let mut emu = Vec::with_capacity(q.len());
    let mut r0 = 0;
    for b in 0..lens.len() {
        let n = starts[b] + lens[b];
        let kb = cache_rows(&keys, slots[b], n, cap, kvrow);
        let vb = cache_rows(&vals, slots[b], n, cap, kvrow);
        let qb = &q[r0 * qrow..(r0 + lens[b]) * qrow];
        want.extend(cpu::causal_attention(qb, kb, vb, starts[b], h.dims()).unwrap());
        if T::HALF {
            emu.extend(emulated_attention::<T>(qb, kb, vb, starts[b], h));
        }
        r0 += lens[b];
    }
    (want, emu)
}

/// Packed prefill of sequences `lens` (each starting empty, in slots `slots` of `n_slots`)
/// against the references.
fn prefill_case<T: AttnDtype>(
    g: &Gpu,
    h: Heads,
    lens: &[usize],
    slots: &[usize],
    n_slots: usize,
    seed: u64,
) {
    prefill_case_with::<T>(g, h, lens, slots, n_slots, seed, Path::Tensor)
}

/// Which prefill kernels a case runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    /// `Gpu::attention_prefill_mma_into` (the sm_80 tensor-core kernels, on every card; the
    /// model's default `attention_prefill_into` picks them or the sm90 ones, both tested here).
    Tensor,
    /// `Gpu::attention_reference_into`, the any-head-dim scalar kernel.
    Scalar,
    /// `Gpu::attention_prefill_sm90_into`, the Hopper kernels.
    Sm90,
}

/// [`prefill_case`] through the kernels of `path`.
#[allow(clippy::too_many_arguments)]
fn prefill_case_with<T: AttnDtype>(
    g: &Gpu,
    h: Heads,
    lens: &[usize],
    slots: &[usize],
    n_slots: usize,
    seed: u64,
    path: Path,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let tokens: usize = lens.iter().sum();
    let cap = lens.iter().copied().max().unwrap() + 3;
    let mut cache = g.kv_cache::<T>(n_slots, cap, h.hkv, h.hd).unwrap();
    let inv = g.rope_inv_freq(h.hd, THETA).unwrap();
    let q = draw::<T>(&mut rng, tokens * h.hq * h.hd, 2.0);
    let k = draw::<T>(&mut rng, tokens * h.hkv * h.hd, 2.0);
    let v = draw::<T>(&mut rng, tokens * h.hkv * h.hd, 1.0);
    let starts = vec![0; lens.len()];
    let batch = g.attn_batch(slots, lens, &starts, n_slots, cap).unwrap();
    let kind = match path {
        Path::Tensor => Attn::Prefill,
        Path::Scalar => Attn::Reference,
        Path::Sm90 => Attn::PrefillSm90,
    };
    let (got, qr) = gpu_step(g, &mut cache, &inv, h, &q, &k, &v, &batch, kind);
    let (want, emu) = references(g, &cache, h, &qr, slots, lens, &starts);
    let what = format!(
        "{} {} lens {lens:?} {h:?}",
        match path {
            Path::Tensor => "prefill",
            Path::Scalar => "scalar attention",
            Path::Sm90 => "sm90 prefill",
        },
        T::SUFFIX
    );
    check_attn::<T>(&what, &got, &want, T::HALF.then_some(&emu[..]), h.hq * h.hd);
}

const H1: Heads = Heads {
    hq: 4,
    hkv: 4,
    hd: 64,
};
const H4: Heads = Heads {
    hq: 8,
    hkv: 2,
    hd: 64,
};
const H6: Heads = Heads {
    hq: 12,
    hkv: 2,
    hd: 128,
};
const H1_128: Heads = Heads {
    hq: 2,
    hkv: 2,
    hd: 128,
};
const H4_128: Heads = Heads {
    hq: 4,
    hkv: 1,
    hd: 128,
};
const H6_64: Heads = Heads {
    hq: 6,
    hkv: 1,
    hd: 64,
};

fn prefill_sweep<T: AttnDtype>(seed0: u64) {
    prefill_sweep_on::<T>(&gpu(), seed0, Path::Tensor);
}

/// The prefill covering set through the kernels of `path`.
fn prefill_sweep_on<T: AttnDtype>(g: &Gpu, seed0: u64, path: Path) {
    let mut seed = seed0;
    // Every length with a rotating (ratio, head dim): each ratio and head dim meets short,
    // block-edge and long lengths.
    let heads = [H1, H4, H6, H1_128, H4_128, H6_64];
    for (i, &l) in [1usize, 2, 127, 129, 1000].iter().enumerate() {
        for j in 0..3 {
            seed += 1;
            let h = heads[(i + 2 * j) % heads.len()];
            prefill_case_with::<T>(g, h, &[l], &[0], 1, seed, path);
        }
    }
    // Batch 3 of different lengths in permuted slots.
    for h in [H6, H4, H1_128] {
        seed += 1;
        prefill_case_with::<T>(g, h, &[129, 1, 1000], &[2, 0, 3], 4, seed, path);
    }
}

#[test]
fn prefill_bf16_matches_reference() {
    prefill_sweep::<half::bf16>(1000);
}

#[test]
fn prefill_f16_matches_reference() {
    prefill_sweep::<half::f16>(2000);
}

/// 4097 tokens (past a power of two and the 128-row blocks) at the 7B shape in bf16 and a
/// 0.5B-like shape in f16.
#[test]
fn prefill_long_4097() {
    let g = gpu();
    prefill_case::<half::bf16>(&g, H6, &[4097], &[0], 1, 3001);
    prefill_case::<half::f16>(&g, H4, &[4097], &[1], 2, 3002);
}

/// Chunked prefill: the sequences are appended and attended in two chunks (the second attends to
/// the cached first); the second chunk's output equals the one-shot prefill's rows and passes the
/// reference.
fn chunked_case<T: AttnDtype>(g: &Gpu, h: Heads, first: &[usize], second: &[usize], seed: u64) {
    chunked_case_with::<T>(g, h, first, second, seed, false)
}

/// [`chunked_case`]; with `sm90`, both chunks and the one-shot prefill run on the Hopper kernels.
fn chunked_case_with<T: AttnDtype>(
    g: &Gpu,
    h: Heads,
    first: &[usize],
    second: &[usize],
    seed: u64,
    sm90: bool,
) {
    let prefill = || {
        if sm90 {
            Attn::PrefillSm90
        } else {
            Attn::Prefill
        }
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let nb = first.len();
    let slots: Vec<usize> = (0..nb).rev().collect();
    let total: Vec<usize> = first.iter().zip(second).map(|(a, b)| a + b).collect();
    let cap = total.iter().copied().max().unwrap();
    let (qrow, kvrow) = (h.hq * h.hd, h.hkv * h.hd);
    let inv = g.rope_inv_freq(h.hd, THETA).unwrap();
    // Per-sequence inputs of the whole sequence.
    let seqs: Vec<[Vec<f32>; 3]> = total
        .iter()
        .map(|&n| {
            [
                draw::<T>(&mut rng, n * qrow, 2.0),
                draw::<T>(&mut rng, n * kvrow, 2.0),
                draw::<T>(&mut rng, n * kvrow, 1.0),
            ]
        })
        .collect();
    let pack = |ranges: &dyn Fn(usize) -> (usize, usize)| -> [Vec<f32>; 3] {
        let mut o: [Vec<f32>; 3] = Default::default();
        for (b, s) in seqs.iter().enumerate() {
            let (a, e) = ranges(b);
            o[0].extend_from_slice(&s[0][a * qrow..e * qrow]);
            o[1].extend_from_slice(&s[1][a * kvrow..e * kvrow]);
            o[2].extend_from_slice(&s[2][a * kvrow..e * kvrow]);
        }
        o
    };

    // One shot.
    let mut c1 = g.kv_cache::<T>(nb, cap, h.hkv, h.hd).unwrap();
    let [q, k, v] = pack(&|b| (0, total[b]));
    let zero = vec![0; nb];
    let b1 = g.attn_batch(&slots, &total, &zero, nb, cap).unwrap();
    let (full, _) = gpu_step(g, &mut c1, &inv, h, &q, &k, &v, &b1, prefill());

    // Two chunks.
    let mut c2 = g.kv_cache::<T>(nb, cap, h.hkv, h.hd).unwrap();
    let [q, k, v] = pack(&|b| (0, first[b]));
    let ba = g.attn_batch(&slots, first, &zero, nb, cap).unwrap();
    gpu_step(g, &mut c2, &inv, h, &q, &k, &v, &ba, prefill());
    let [q, k, v] = pack(&|b| (first[b], total[b]));
    let bb = g.attn_batch(&slots, second, first, nb, cap).unwrap();
    let (got, qr) = gpu_step(g, &mut c2, &inv, h, &q, &k, &v, &bb, prefill());
    let (want, emu) = references(g, &c2, h, &qr, &slots, second, first);
    let what = format!(
        "chunked {}prefill {} chunks {first:?} + {second:?} {h:?}",
        if sm90 { "sm90 " } else { "" },
        T::SUFFIX
    );
    check_attn::<T>(&what, &got, &want, T::HALF.then_some(&emu[..]), qrow);

    // The one-shot rows of the second chunks.
    let mut rows = Vec::new();
    let mut r0 = 0;
    for b in 0..nb {
        rows.extend_from_slice(&full[(r0 + first[b]) * qrow..(r0 + total[b]) * qrow]);
        r0 += total[b];
    }
    compare(
        &format!("{what}: second chunk vs one-shot prefill"),
        &got,
        &rows,
        qrow,
        1e-2,
    );
}

/// The Hopper kernels (`Gpu::attention_prefill_sm90_into`) on the covering set of the bf16/f16
/// prefill tests (lengths 1, 2, 127, 129, 1000 and 4097; GQA ratios 1, 4 and 6; head dims 64 and
/// 128; a batch of 3 different lengths; chunked prefill against a cached prefix), under the same
/// 2x-emulated-error rule. On a device that is not compute capability 9.0 it checks that the
/// launcher refuses, prints that the rest is skipped, and passes.
#[test]
fn sm90_prefill_matches_reference() {
    let g = gpu();
    if !g.attention_sm90_supported().unwrap() {
        // The launcher must refuse (not launch a trapping kernel) off Hopper.
        let cache = g.kv_cache::<half::bf16>(1, 4, 1, 64).unwrap();
        let batch = g.attn_batch(&[0], &[1], &[0], 1, 4).unwrap();
        let q = g.zeros::<half::bf16>(64).unwrap();
        let mut out = g.zeros::<half::bf16>(64).unwrap();
        let err = g
            .attention_prefill_sm90_into(&q, &cache, &batch, 1, &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("9.0"), "unexpected error: {err}");
        println!(
            "sm90_prefill_matches_reference: skipped, the device ({}) is not compute capability 9.0",
            g.name().unwrap_or_default()
        );
        return;
    }
    prefill_sweep_on::<half::bf16>(&g, 8000, Path::Sm90);
    prefill_sweep_on::<half::f16>(&g, 8100, Path::Sm90);
    prefill_case_with::<half::bf16>(&g, H6, &[4097], &[0], 1, 8201, Path::Sm90);
    prefill_case_with::<half::f16>(&g, H4, &[4097], &[1], 2, 8202, Path::Sm90);
    chunked_case_with::<half::bf16>(&g, H6, &[300], &[429], 8301, true);
    chunked_case_with::<half::f16>(&g, H4, &[128, 5, 1000], &[1, 200, 129], 8302, true);
    chunked_case_with::<half::bf16>(&g, H1_128, &[1, 64], &[127, 1], 8303, true);
    chunked_case_with::<half::f16>(&g, H6_64, &[1, 4000], &[300, 97], 8304, true);
}

#[test]
fn chunked_prefill_equals_one_prefill() {
    let g = gpu();
    chunked_case::<half::bf16>(&g, H6, &[300], &[429], 4001);
    chunked_case::<half::f16>(&g, H4, &[128, 5, 1000], &[1, 200, 129], 4002);
    chunked_case::<half::bf16>(&g, H1_128, &[1, 64], &[127, 1], 4003);
    chunked_case::<f32>(&g, H4_128, &[77, 3], &[50, 130], 4004);
}

/// Prefill of `prompts`, then `steps` decode steps (one token per sequence, all sequences in
/// one batch whose device arrays are rewritten in place, as a graph replay would), each checked
/// against the references.
fn decode_case<T: AttnDtype>(g: &Gpu, h: Heads, prompts: &[usize], steps: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let nb = prompts.len();
    let n_slots = nb + 1;
    let slots: Vec<usize> = (0..nb).map(|b| (b + 1) % n_slots).collect();
    let cap = prompts.iter().copied().max().unwrap() + steps;
    let (qrow, kvrow) = (h.hq * h.hd, h.hkv * h.hd);
    let mut cache = g.kv_cache::<T>(n_slots, cap, h.hkv, h.hd).unwrap();
    let inv = g.rope_inv_freq(h.hd, THETA).unwrap();
    let tokens: usize = prompts.iter().sum();
    let q = draw::<T>(&mut rng, tokens * qrow, 2.0);
    let k = draw::<T>(&mut rng, tokens * kvrow, 2.0);
    let v = draw::<T>(&mut rng, tokens * kvrow, 1.0);
    let zero = vec![0; nb];
    let pb = g.attn_batch(&slots, prompts, &zero, n_slots, cap).unwrap();
    // The prompts only fill the cache (no prefill attention needed, so the decode kernels are
    // tested on their own).
    gpu_step(g, &mut cache, &inv, h, &q, &k, &v, &pb, Attn::AppendOnly);

    let ones = vec![1; nb];
    let mut scratch = g.decode_scratch(nb, h.hq, h.hd, cap).unwrap();
    let mut db = g.attn_batch(&slots, &ones, prompts, n_slots, cap).unwrap();
    for step in 0..steps {
        let starts: Vec<usize> = prompts.iter().map(|&p| p + step).collect();
        g.attn_batch_update(&mut db, &slots, &starts, n_slots, cap)
            .unwrap();
        let q = draw::<T>(&mut rng, nb * qrow, 2.0);
        let k = draw::<T>(&mut rng, nb * kvrow, 2.0);
        let v = draw::<T>(&mut rng, nb * kvrow, 1.0);
        let (got, qr) = gpu_step(
            g,
            &mut cache,
            &inv,
            h,
            &q,
            &k,
            &v,
            &db,
            Attn::Decode(&mut scratch),
        );
        let (want, emu) = references(g, &cache, h, &qr, &slots, &ones, &starts);
        let what = format!(
            "decode {} step {step} starts {starts:?} {h:?} ({} splits)",
            T::SUFFIX,
            scratch.num_splits(h.hkv)
        );
        check_attn::<T>(&what, &got, &want, T::HALF.then_some(&emu[..]), qrow);
    }
}

#[test]
fn decode_after_prefill_bf16() {
    let g = gpu();
    decode_case::<half::bf16>(&g, H6, &[100, 1000, 37], 4, 5001);
    decode_case::<half::bf16>(&g, H4, &[1, 129], 3, 5002);
    decode_case::<half::bf16>(&g, H1_128, &[4097], 2, 5003);
    decode_case::<half::bf16>(
        &g,
        Heads {
            hq: 20,
            hkv: 4,
            hd: 128,
        },
        &[700, 2],
        2,
        5004,
    );
    // Ratio 12 (two head chunks per kv head) and ratio 3 (a padded chunk).
    decode_case::<half::bf16>(
        &g,
        Heads {
            hq: 12,
            hkv: 1,
            hd: 64,
        },
        &[300],
        2,
        5005,
    );
    decode_case::<half::bf16>(
        &g,
        Heads {
            hq: 6,
            hkv: 2,
            hd: 128,
        },
        &[5, 800],
        2,
        5006,
    );
}

#[test]
fn decode_after_prefill_f16() {
    let g = gpu();
    decode_case::<half::f16>(&g, H6_64, &[100, 1000, 37], 4, 6001);
    decode_case::<half::f16>(&g, H4_128, &[2, 127], 3, 6002);
    decode_case::<half::f16>(&g, H1, &[4097, 10], 2, 6003);
}

/// The fused decode kernel (the default path of `Gpu::attention_decode_into`) at awkward cache
/// lengths: every slot is filled with random keys, then two decode launches in a row on the same
/// scratch and batch (its device arrays rewritten in place, as a CUDA graph replay would) with
/// sequences of `first` and then `second` keys (the new token included). Each output is poisoned
/// first and checked against the references, so a counter left non-zero by the first launch
/// (the second would then combine too early or never) fails the second check.
fn decode_lengths_case<T: AttnDtype>(
    g: &Gpu,
    h: Heads,
    first: &[usize],
    second: &[usize],
    seed: u64,
) {
    assert_eq!(first.len(), second.len());
    let mut rng = StdRng::seed_from_u64(seed);
    let nb = first.len();
    let n_slots = nb + 1;
    let slots: Vec<usize> = (0..nb).map(|b| (b + 2) % n_slots).collect();
    let fill = first.iter().chain(second).copied().max().unwrap();
    let cap = fill + 1;
    let (qrow, kvrow) = (h.hq * h.hd, h.hkv * h.hd);
    let mut cache = g.kv_cache::<T>(n_slots, cap, h.hkv, h.hd).unwrap();
    let inv = g.rope_inv_freq(h.hd, THETA).unwrap();
    let fills = vec![fill; nb];
    let tokens = nb * fill;
    let q = draw::<T>(&mut rng, tokens * qrow, 2.0);
    let k = draw::<T>(&mut rng, tokens * kvrow, 2.0);
    let v = draw::<T>(&mut rng, tokens * kvrow, 1.0);
    let pb = g
        .attn_batch(&slots, &fills, &vec![0; nb], n_slots, cap)
        .unwrap();
    gpu_step(g, &mut cache, &inv, h, &q, &k, &v, &pb, Attn::AppendOnly);

    let ones = vec![1; nb];
    let mut scratch = g.decode_scratch(nb, h.hq, h.hd, cap).unwrap();
    let starts0: Vec<usize> = first.iter().map(|&l| l - 1).collect();
    let mut db = g.attn_batch(&slots, &ones, &starts0, n_slots, cap).unwrap();
    for (launch, lens) in [first, second].into_iter().enumerate() {
        let starts: Vec<usize> = lens.iter().map(|&l| l - 1).collect();
        g.attn_batch_update(&mut db, &slots, &starts, n_slots, cap)
            .unwrap();
        let q = draw::<T>(&mut rng, nb * qrow, 2.0);
        let k = draw::<T>(&mut rng, nb * kvrow, 2.0);
        let v = draw::<T>(&mut rng, nb * kvrow, 1.0);
        let (got, qr) = gpu_step(
            g,
            &mut cache,
            &inv,
            h,
            &q,
            &k,
            &v,
            &db,
            Attn::Decode(&mut scratch),
        );
        let (want, emu) = references(g, &cache, h, &qr, &slots, &ones, &starts);
        let what = format!(
            "fused decode {} launch {launch} keys {lens:?} {h:?} ({} splits)",
            T::SUFFIX,
            scratch.num_splits(h.hkv)
        );
        check_attn::<T>(&what, &got, &want, T::HALF.then_some(&emu[..]), qrow);
    }
}

/// Cache lengths 1, 2, 255, 257, 4097 and 33000 in batches of 3 different lengths, GQA ratios 1,
/// 4 and 6, head dims 64 and 128, two launches in a row per case (see `decode_lengths_case`).
fn decode_lengths_sweep<T: AttnDtype>(seed0: u64) {
    let g = gpu();
    let heads = [
        Heads {
            hq: 2,
            hkv: 2,
            hd: 64,
        },
        Heads {
            hq: 8,
            hkv: 2,
            hd: 128,
        },
        Heads {
            hq: 12,
            hkv: 2,
            hd: 128,
        },
        Heads {
            hq: 6,
            hkv: 1,
            hd: 64,
        },
    ];
    let pairs: [([usize; 3], [usize; 3]); 2] = [
        ([1, 257, 33000], [4097, 2, 255]),
        ([255, 4097, 2], [33000, 1, 257]),
    ];
    for (i, h) in heads.into_iter().enumerate() {
        for (j, (a, b)) in pairs.iter().enumerate() {
            decode_lengths_case::<T>(&g, h, a, b, seed0 + (10 * i + j) as u64);
        }
    }
    // One sequence alone (the direct-write path at 1 key, the combine at 33000).
    decode_lengths_case::<T>(&g, heads[2], &[33000], &[1], seed0 + 99);
}

#[test]
fn decode_fused_lengths_bf16() {
    decode_lengths_sweep::<half::bf16>(8001);
}

#[test]
fn decode_fused_lengths_f16() {
    decode_lengths_sweep::<half::f16>(8101);
}

/// f32: the scalar prefill and the f32 decode kernels within 1e-5 of the CPU, at the model head
/// dims and at the small ones of the bundled test models (16, 32).
#[test]
fn f32_path_matches_cpu() {
    let g = gpu();
    prefill_case::<f32>(&g, H6, &[129, 1, 300], &[1, 2, 0], 3, 7001);
    prefill_case::<f32>(&g, H4, &[1000], &[0], 1, 7002);
    prefill_case::<f32>(
        &g,
        Heads {
            hq: 4,
            hkv: 2,
            hd: 16,
        },
        &[37, 5],
        &[1, 0],
        2,
        7003,
    );
    prefill_case::<f32>(
        &g,
        Heads {
            hq: 6,
            hkv: 2,
            hd: 32,
        },
        &[127],
        &[0],
        1,
        7004,
    );
    decode_case::<f32>(&g, H6, &[100, 1000], 3, 7005);
    decode_case::<f32>(&g, H1, &[1, 2050], 2, 7006);
    decode_case::<f32>(
        &g,
        Heads {
            hq: 4,
            hkv: 1,
            hd: 16,
        },
        &[20, 3],
        2,
        7007,
    );
}

/// kv_append against cpu::rope_neox + k_scale + copies: q in place, k and v into the right
/// rows of the right slots (k and v strided), other rows untouched.
fn append_case<T: AttnDtype>(
    g: &Gpu,
    h: Heads,
    lens: &[usize],
    starts: &[usize],
    k_scale: f32,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let nb = lens.len();
    let n_slots = nb + 2;
    let slots: Vec<usize> = (0..nb).map(|b| n_slots - 1 - b).collect();
    let cap = (0..nb).map(|b| starts[b] + lens[b]).max().unwrap() + 2;
    let tokens: usize = lens.iter().sum();
    let (qrow, kvrow) = (h.hq * h.hd, h.hkv * h.hd);
    let q = draw::<T>(&mut rng, tokens * qrow, 2.0);
    let k = draw::<T>(&mut rng, tokens * kvrow, 2.0);
    let v = draw::<T>(&mut rng, tokens * kvrow, 2.0);
    let mut cache = g.kv_cache::<T>(n_slots, cap, h.hkv, h.hd).unwrap();
    let theta = 1e11;
    let inv = g.rope_inv_freq(h.hd, theta).unwrap();
    let batch = g.attn_batch(&slots, lens, starts, n_slots, cap).unwrap();
    // k dense at an offset, v in a wider buffer.
    let koff = 8;
    let mut kbuf = vec![f32::NAN; koff];
    kbuf.extend_from_slice(&k);
    let vstride = kvrow + 24;
    let mut vbuf = vec![f32::NAN; tokens * vstride];
    for r in 0..tokens {
        vbuf[r * vstride..][..kvrow].copy_from_slice(&v[r * kvrow..][..kvrow]);
    }
    let dk = g.upload(&to_t::<T>(&kbuf)).unwrap();
    let dv = g.upload(&to_t::<T>(&vbuf)).unwrap();
    let mut dq = g.upload(&to_t::<T>(&q)).unwrap();
    let ks = Strided {
        buf: &dk,
        offset: koff,
        row_stride: kvrow,
    };
    let vs = Strided {
        buf: &dv,
        offset: 0,
        row_stride: vstride,
    };
    g.kv_append(&mut dq, ks, vs, &inv, &mut cache, &batch, h.hq, k_scale)
        .unwrap();
    g.synchronize().unwrap();

    let positions: Vec<usize> = (0..nb)
        .flat_map(|b| starts[b]..starts[b] + lens[b])
        .collect();
    let mut wq = q.clone();
    cpu::rope_neox(&mut wq, &positions, h.hq, h.hd, theta).unwrap();
    let wq: Vec<f32> = wq.iter().map(|&x| round::<T>(x)).collect();
    let mut wk = k.clone();
    cpu::rope_neox(&mut wk, &positions, h.hkv, h.hd, theta).unwrap();
    let mut want_k = vec![0f32; n_slots * cap * kvrow];
    let mut want_v = want_k.clone();
    let mut r = 0;
    for b in 0..nb {
        for i in 0..lens[b] {
            let dst = (slots[b] * cap + starts[b] + i) * kvrow;
            for j in 0..kvrow {
                want_k[dst + j] = round::<T>(wk[r * kvrow + j] * k_scale);
                want_v[dst + j] = v[r * kvrow + j];
            }
            r += 1;
        }
    }
    let what = format!(
        "kv_append {} lens {lens:?} starts {starts:?} {h:?} k_scale {k_scale}",
        T::SUFFIX
    );
    let tol = 1e-5;
    compare(
        &format!("{what}: q"),
        &to_f32(&g.download(&dq).unwrap()),
        &wq,
        qrow,
        tol,
    );
    compare(
        &format!("{what}: cache keys"),
        &to_f32(&g.download(cache.keys()).unwrap()),
        &want_k,
        kvrow,
        tol,
    );
    let got_v = to_f32(&g.download(cache.values()).unwrap());
    assert_eq!(got_v, want_v, "{what}: cache values are not exact copies");
}

#[test]
fn kv_append_matches_rope_and_copy() {
    let g = gpu();
    append_case::<half::bf16>(&g, H6, &[5, 1, 300], &[0, 4000, 17], 1.0, 8001);
    append_case::<half::f16>(&g, H4, &[129], &[1000], 1.0, 8002);
    append_case::<half::bf16>(&g, H1_128, &[3, 2], &[7, 0], 0.390625, 8003);
    append_case::<f32>(&g, H6_64, &[1, 1, 1], &[5, 0, 33000], 1.0, 8004);
    append_case::<f32>(
        &g,
        Heads {
            hq: 4,
            hkv: 2,
            hd: 16,
        },
        &[10],
        &[3],
        0.5,
        8005,
    );
}

/// Bad inputs are errors, never panics or wrong answers.
#[test]
fn errors_are_reported() {
    let g = gpu();
    // head_dim 96 in bf16: the cache (storage) takes it, the fast kernels refuse it by name.
    let cache96 = g.kv_cache::<half::bf16>(1, 16, 2, 96).unwrap();
    let b96 = g.attn_batch(&[0], &[3], &[0], 1, 16).unwrap();
    let q96 = g.upload(&vec![half::bf16::ZERO; 3 * 2 * 96]).unwrap();
    let mut o96 = g.upload(&vec![half::bf16::ZERO; 3 * 2 * 96]).unwrap();
    let e = g
        .attention_prefill_into(&q96, &cache96, &b96, 2, &mut o96)
        .expect_err("hd 96 prefill");
    assert!(e.to_string().contains("96"), "{e}");
    // An odd head dim is refused even by the cache.
    let e = g.kv_cache::<half::bf16>(1, 16, 2, 97).err().expect("hd 97");
    assert!(e.to_string().contains("97"), "{e}");
    // Capacity exceeded, naming the slot, what it holds, how many more and the capacity.
    let e = g
        .attn_batch(&[1], &[10], &[60], 2, 64)
        .err()
        .expect("capacity");
    let m = e.to_string();
    assert!(
        m.contains("slot 1") && m.contains("60") && m.contains("10") && m.contains("64"),
        "{m}"
    );
    // Duplicate slots.
    let e = g
        .attn_batch(&[0, 0], &[1, 1], &[0, 0], 2, 64)
        .err()
        .expect("dup");
    assert!(e.to_string().contains("slot 0"), "{e}");
    // Slot out of range, empty sequence.
    assert!(g.attn_batch(&[2], &[1], &[0], 2, 64).is_err());
    assert!(g.attn_batch(&[0], &[0], &[0], 2, 64).is_err());

    let h = H4;
    let mut cache = g.kv_cache::<half::bf16>(2, 64, h.hkv, h.hd).unwrap();
    let inv = g.rope_inv_freq(h.hd, THETA).unwrap();
    let batch = g.attn_batch(&[0, 1], &[3, 1], &[0, 0], 2, 64).unwrap();
    let tokens = 4;
    let mut q = g.zeros::<half::bf16>(tokens * h.hq * h.hd).unwrap();
    let kv = g.zeros::<half::bf16>(tokens * h.hkv * h.hd).unwrap();
    let ks = Strided::dense(&kv, h.hkv * h.hd);
    // Hq % Hkv != 0.
    let e = g
        .kv_append(&mut q, ks, ks, &inv, &mut cache, &batch, 7, 1.0)
        .expect_err("Hq 7 with Hkv 2");
    assert!(e.to_string().contains("7"), "{e}");
    let mut out = g.zeros::<half::bf16>(tokens * h.hq * h.hd).unwrap();
    assert!(g
        .attention_prefill_into(&q, &cache, &batch, 3, &mut out)
        .is_err());
    // Wrong q size names q.
    let mut short = g.zeros::<half::bf16>(3 * h.hq * h.hd).unwrap();
    let e = g
        .kv_append(&mut short, ks, ks, &inv, &mut cache, &batch, h.hq, 1.0)
        .expect_err("short q");
    assert!(e.to_string().contains("`q`"), "{e}");
    // Decode of a prefill batch.
    let mut scratch = g.decode_scratch(2, h.hq, h.hd, 64).unwrap();
    let e = g
        .attention_decode_into(&q, &cache, &batch, h.hq, &mut scratch, &mut out)
        .expect_err("not a decode batch");
    assert!(e.to_string().contains("one new token"), "{e}");
    // A batch validated for a bigger cache is re-checked against this one.
    let big = g.attn_batch(&[0, 5], &[3, 1], &[0, 0], 8, 64).unwrap();
    assert!(g
        .attention_prefill_into(&q, &cache, &big, h.hq, &mut out)
        .is_err());
    // attn_batch_update keeps the batch size and validates.
    let mut db = g.attn_batch(&[0, 1], &[1, 1], &[3, 4], 2, 64).unwrap();
    assert!(g.attn_batch_update(&mut db, &[0], &[3], 2, 64).is_err());
    assert!(g
        .attn_batch_update(&mut db, &[1, 1], &[3, 4], 2, 64)
        .is_err());
    assert!(g
        .attn_batch_update(&mut db, &[1, 0], &[64, 4], 2, 64)
        .is_err());
    g.attn_batch_update(&mut db, &[1, 0], &[62, 4], 2, 64)
        .unwrap();
    assert_eq!(db.starts(), &[62, 4]);
}

/// The scalar any-head-dim kernel (the model's path for the tiny test models' head dims 16 and
/// 32 in bf16/f16) against the references, prefill and one-token batches.
#[test]
fn scalar_attention_any_head_dim() {
    let g = gpu();
    let small = |hq, hkv, hd| Heads { hq, hkv, hd };
    prefill_case_with::<half::bf16>(
        &g,
        small(4, 2, 16),
        &[37, 5, 1],
        &[2, 0, 1],
        3,
        7101,
        Path::Scalar,
    );
    prefill_case_with::<half::bf16>(&g, small(6, 1, 32), &[129], &[0], 1, 7102, Path::Scalar);
    prefill_case_with::<half::f16>(
        &g,
        small(4, 4, 16),
        &[20, 64],
        &[1, 0],
        2,
        7103,
        Path::Scalar,
    );
    prefill_case_with::<half::bf16>(&g, H4, &[200], &[0], 1, 7104, Path::Scalar);
}
