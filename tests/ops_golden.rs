//! The CPU SSD (both forms) and conv against HF's own torch functions (tests/data/ops/, made by
//! python-ref/make_goldens.py).

mod common;

use falcon_h1_kernels::cpu;
use falcon_h1_kernels::tensor::rel_l2;
use falcon_h1_kernels::weights::Checkpoint;

fn open(name: &str) -> Checkpoint {
    Checkpoint::open_file(&common::data_dir().join("ops").join(name)).expect("golden opens")
}

fn f(c: &Checkpoint, n: &str) -> (Vec<usize>, Vec<f32>) {
    let t = c.tensor_any_f32(n).unwrap_or_else(|e| panic!("{n}: {e}"));
    (t.shape, t.data)
}

fn check_ssd(file: &str) {
    let c = open(file);
    let (xs, x) = f(&c, "x");
    let (bs, b) = f(&c, "B");
    let (_, dt) = f(&c, "dt");
    let (_, dt_bias) = f(&c, "dt_bias");
    let (_, a_log) = f(&c, "A_log");
    let (_, cc) = f(&c, "C");
    let (_, d) = f(&c, "D");
    let (_, init) = f(&c, "initial_state");
    let (_, y_ref) = f(&c, "y");
    let (_, fin_ref) = f(&c, "final_state");
    let (_, lim) = f(&c, "dt_limit");
    let chunk = c.tensor_i64("chunk_size").unwrap().1[0] as usize;
    let dims = cpu::SsdDims {
        seqlen: xs[0],
        heads: xs[1],
        head_dim: xs[2],
        groups: bs[1],
        state: bs[2],
    };
    let inp = cpu::SsdInputs {
        x: &x,
        dt: &dt,
        dt_bias: &dt_bias,
        a_log: &a_log,
        b: &b,
        c: &cc,
        d: Some(&d),
        dt_limit: (lim[0], lim[1]),
        initial_state: Some(&init),
    };
    let (y1, f1) = cpu::ssd_chunked(&inp, dims, chunk).unwrap();
    let (y2, f2) = cpu::ssd_recurrent(&inp, dims).unwrap();
    for (what, got, want) in [
        ("chunked y", &y1, &y_ref),
        ("chunked final state", &f1, &fin_ref),
        ("recurrent y", &y2, &y_ref),
        ("recurrent final state", &f2, &fin_ref),
    ] {
        let e = rel_l2(got, want);
        println!("{file} {what}: rel L2 {e:.3e}");
        assert!(e < 1e-5, "{file} {what}: {e:.3e}");
    }
}

#[test]
fn ssd_matches_hf_chunk_scan_with_groups_and_initial_state() {
    check_ssd("ssd.safetensors");
}

#[test]
fn ssd_matches_hf_chunk_scan_with_dt_clamp() {
    check_ssd("ssd_clamp.safetensors");
}

#[test]
fn conv_matches_hf_prefill_and_update() {
    let c = open("conv.safetensors");
    let (xs, x) = f(&c, "x");
    let (_, w) = f(&c, "weight");
    let (_, bias) = f(&c, "bias");
    let (_, out_ref) = f(&c, "out");
    let (_, x_next) = f(&c, "x_next");
    let (_, out_next_ref) = f(&c, "out_next");
    let width = c.tensor_i64("width").unwrap().1[0] as usize;
    let channels = xs[1];
    let (out, mut state) =
        cpu::causal_conv1d(&x, &w, Some(&bias), None, channels, width, true).unwrap();
    let e = rel_l2(&out, &out_ref);
    assert!(e < 1e-6, "conv prefill: {e:.3e}");
    let next = cpu::causal_conv1d_update(
        &x_next,
        &mut state,
        &w,
        Some(&bias),
        1,
        channels,
        width,
        true,
    )
    .unwrap();
    let e = rel_l2(&next, &out_next_ref);
    assert!(e < 1e-6, "conv update: {e:.3e}");
}
