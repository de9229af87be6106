//! The hybrid cache: prefill then decode equals one full forward; chunked prefill equals one
//! prefill; a batch of prompts of different lengths equals each prompt alone; batched decode
//! equals per-sequence decode; generation with the cache equals recomputation without it.

mod common;

use falcon_h1_kernels::model::{argmax, generate, CpuBackend, HybridModel, Logits, Sampling};
use falcon_h1_kernels::tensor::rel_l2;

fn prompt(seed: u32, len: usize, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97 + 13) >> 7) % vocab as u32)
        .collect()
}

fn full_logits(m: &HybridModel<CpuBackend>, toks: &[u32]) -> Vec<f32> {
    m.prefill_all(&[toks], false).unwrap().logits.unwrap().data
}

fn models() -> Vec<(&'static str, HybridModel<CpuBackend>)> {
    ["tiny", "g2_nbg", "mup_05b", "len1"]
        .into_iter()
        .map(|n| (n, common::cpu_model(n)))
        .collect()
}

#[test]
fn prefill_then_decode_equals_one_forward() {
    for (name, m) in models() {
        let v = m.config().vocab_size;
        let toks = prompt(1, 29, v);
        let full = full_logits(&m, &toks);
        let split = 21;
        let mut cache = m.new_cache(1, 64).unwrap();
        let mut got = m
            .forward(&[&toks[..split]], &[0], &mut cache, Logits::All, false)
            .unwrap()
            .logits
            .unwrap()
            .data;
        for t in &toks[split..] {
            let o = m
                .forward(&[&[*t]], &[0], &mut cache, Logits::All, false)
                .unwrap();
            got.extend(o.logits.unwrap().data);
        }
        let e = rel_l2(&got, &full);
        assert!(e < 1e-5, "{name}: prefill+decode vs one forward: {e:.3e}");
        assert_eq!(cache.seq_len(0), toks.len());
    }
}

#[test]
fn chunked_prefill_equals_one_prefill() {
    for (name, m) in models() {
        let v = m.config().vocab_size;
        let toks = prompt(2, 50, v);
        let full = full_logits(&m, &toks);
        let mut cache = m.new_cache(1, 50).unwrap();
        let mut got = Vec::new();
        for piece in [&toks[..7], &toks[7..33], &toks[33..]] {
            let o = m
                .forward(&[piece], &[0], &mut cache, Logits::All, false)
                .unwrap();
            got.extend(o.logits.unwrap().data);
        }
        let e = rel_l2(&got, &full);
        assert!(e < 1e-5, "{name}: chunked prefill: {e:.3e}");
    }
}

#[test]
fn ragged_batch_equals_each_prompt_alone() {
    for (name, m) in models() {
        let v = m.config().vocab_size;
        let ps = [prompt(3, 17, v), prompt(4, 1, v), prompt(5, 40, v)];
        let refs: Vec<&[u32]> = ps.iter().map(|p| p.as_slice()).collect();
        let batched = m.prefill_all(&refs, true).unwrap();
        let mut alone = Vec::new();
        for p in &ps {
            alone.extend(full_logits(&m, p));
        }
        let e = rel_l2(&batched.logits.unwrap().data, &alone);
        assert!(e < 1e-5, "{name}: ragged batch: {e:.3e}");
        assert_eq!(batched.hidden_states.len(), m.config().num_hidden_layers);
    }
}

#[test]
fn batched_decode_equals_per_sequence_decode() {
    // HF 5.17 gets this wrong when mamba_rms_norm is on (spec); we must not.
    for (name, m) in models() {
        let v = m.config().vocab_size;
        let ps = vec![prompt(6, 9, v), prompt(7, 23, v), prompt(8, 2, v)];
        let batched = generate(&m, &ps, 6, &Sampling::greedy(), &[], true).unwrap();
        for (i, p) in ps.iter().enumerate() {
            let one = generate(
                &m,
                std::slice::from_ref(p),
                6,
                &Sampling::greedy(),
                &[],
                true,
            )
            .unwrap();
            assert_eq!(batched.tokens[i], one.tokens[0], "{name}: seq {i} tokens");
            let a: Vec<f32> = batched.logits[i].concat();
            let b: Vec<f32> = one.logits[0].concat();
            let e = rel_l2(&a, &b);
            assert!(e < 1e-5, "{name}: seq {i} decode logits: {e:.3e}");
        }
    }
}

#[test]
fn generation_with_cache_equals_recomputation() {
    for (name, m) in models() {
        let v = m.config().vocab_size;
        let p = prompt(9, 12, v);
        let g = generate(
            &m,
            std::slice::from_ref(&p),
            8,
            &Sampling::greedy(),
            &[],
            true,
        )
        .unwrap();
        let mut seq = p.clone();
        for step in 0..8 {
            let logits = full_logits(&m, &seq);
            let last = &logits[(seq.len() - 1) * v..];
            let e = rel_l2(&g.logits[0][step], last);
            assert!(e < 1e-5, "{name}: step {step}: {e:.3e}");
            let t = argmax(last);
            assert_eq!(t, g.tokens[0][step], "{name}: step {step} token");
            seq.push(t);
        }
    }
}

#[test]
fn slots_are_isolated() {
    let m = common::cpu_model("tiny");
    let v = m.config().vocab_size;
    let (a, b) = (prompt(10, 15, v), prompt(11, 11, v));
    let mut cache = m.new_cache(2, 64).unwrap();
    m.forward(&[&a], &[1], &mut cache, Logits::None, false)
        .unwrap();
    // A sequence in slot 0 is unaffected by what slot 1 holds.
    let o = m
        .forward(&[&b], &[0], &mut cache, Logits::All, false)
        .unwrap();
    let e = rel_l2(&o.logits.unwrap().data, &full_logits(&m, &b));
    assert!(e < 1e-6, "slot isolation: {e:.3e}");
}

#[test]
fn sampling_is_seeded_and_top_k_one_is_greedy() {
    let m = common::cpu_model("tiny");
    let v = m.config().vocab_size;
    let p = vec![prompt(12, 5, v)];
    let s = Sampling {
        temperature: 0.8,
        top_k: 20,
        top_p: 0.9,
        seed: 42,
    };
    let a = generate(&m, &p, 10, &s, &[], false).unwrap();
    let b = generate(&m, &p, 10, &s, &[], false).unwrap();
    assert_eq!(a.tokens, b.tokens, "same seed, same tokens");
    let k1 = Sampling {
        temperature: 1.0,
        top_k: 1,
        top_p: 1.0,
        seed: 3,
    };
    let g1 = generate(&m, &p, 10, &k1, &[], false).unwrap();
    let g0 = generate(&m, &p, 10, &Sampling::greedy(), &[], false).unwrap();
    assert_eq!(g1.tokens, g0.tokens);
    // EOS stops a sequence early and is kept.
    let eos = g0.tokens[0][3];
    let first = g0.tokens[0].iter().position(|&t| t == eos).unwrap();
    let ge = generate(&m, &p, 10, &Sampling::greedy(), &[eos], false).unwrap();
    assert_eq!(ge.tokens[0], g0.tokens[0][..=first].to_vec());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let m = common::cpu_model("tiny");
    let v = m.config().vocab_size as u32;
    let mut cache = m.new_cache(1, 4).unwrap();
    let e = m
        .forward(&[&[1, 2, 3, 4, 5]], &[0], &mut cache, Logits::Last, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("capacity"), "{e}");
    let e = m
        .forward(&[&[1, v]], &[0], &mut cache, Logits::Last, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&v.to_string()) && e.contains("vocabulary"),
        "{e}"
    );
    let e = m
        .forward(&[&[1]], &[3], &mut cache, Logits::Last, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("slot 3"), "{e}");
    assert!(m
        .forward(&[&[]], &[0], &mut cache, Logits::Last, false)
        .is_err());
    assert!(generate(&m, &[vec![]], 3, &Sampling::greedy(), &[], false).is_err());
    let bad = Sampling {
        temperature: -1.0,
        ..Sampling::greedy()
    };
    assert!(generate(&m, &[vec![1]], 3, &bad, &[], false).is_err());
}

/// A model with random weights made on the backend runs (finite logits), is deterministic in its
/// seed, and differs with another seed.
#[test]
fn random_model_runs_and_is_seeded() {
    let dir = common::data_dir().join("tiny");
    let (cfg, _) = falcon_h1_kernels::load_model_dir(&dir, false).unwrap();
    let a = HybridModel::random(CpuBackend, cfg.clone(), 7).unwrap();
    let b = HybridModel::random(CpuBackend, cfg.clone(), 7).unwrap();
    let c = HybridModel::random(CpuBackend, cfg, 8).unwrap();
    let toks = [1u32, 5, 9, 2];
    let la = full_logits(&a, &toks);
    assert!(la.iter().all(|v| v.is_finite()));
    assert_eq!(la, full_logits(&b, &toks));
    assert!(rel_l2(&la, &full_logits(&c, &toks)) > 1e-3);
}

/// generate_with and a step function that runs the plain forward give what generate gives.
#[test]
fn generate_with_a_plain_step_equals_generate() {
    use falcon_h1_kernels::model::{generate_with, HybridCache};
    let m = common::cpu_model("tiny");
    let prompts = vec![prompt(1, 6, 64), prompt(2, 3, 64)];
    let want = generate(&m, &prompts, 5, &Sampling::greedy(), &[], true).unwrap();
    let mut calls = 0;
    let mut step =
        |m: &HybridModel<CpuBackend>, t: &[u32], s: &[usize], c: &mut HybridCache<CpuBackend>| {
            calls += 1;
            let lists: Vec<&[u32]> = t.chunks(1).collect();
            Ok(m.forward(&lists, s, c, Logits::Last, false)?
                .logits
                .unwrap()
                .into())
        };
    let got = generate_with(&m, &prompts, 5, &Sampling::greedy(), &[], true, &mut step).unwrap();
    assert_eq!(got.tokens, want.tokens);
    assert_eq!(got.logits, want.logits);
    assert_eq!(calls, 4, "one prefill, then 4 decode steps");
}
