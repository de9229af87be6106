//! Times the causal conv1d kernels (kernels/conv1d.cu) at Falcon-H1 shapes, next to the torch
//! anchor of PERF.md (H200). Plain `fn main()` bench (harness = false):
//! `cargo bench --features cuda --bench gpu -- cuda_conv1d`.
//! Bytes counted: x read and out written once (prefill; the conv state and weights are noise),
//! plus x, state read + written and out for decode.

pub fn run() {
    use falcon_h1_kernels::cuda::conv1d::{Conv1dDims, Strided};
    use falcon_h1_kernels::cuda::Gpu;
    use half::bf16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::Instant;

    const COPY_TBPS: f64 = 4.15;
    let g = Gpu::new(0).expect("benches/cuda_conv1d.rs needs a CUDA GPU");
    println!("device: {}", g.name().unwrap_or_default());
    let mut rng = StdRng::seed_from_u64(1);
    let mut fresh = |n: usize| -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.random_range(-2.0..2.0)))
            .collect()
    };
    // Median of 20 timed runs (each synchronised) after 5 warm-up runs.
    let time = |f: &mut dyn FnMut()| -> f64 {
        for _ in 0..5 {
            f();
        }
        g.synchronize().unwrap();
        let mut v: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                f();
                g.synchronize().unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let report = |name: &str, shape: &str, ms: f64, bytes: f64, anchor: &str| {
        let gbps = bytes / ms / 1e6;
        println!(
            "{name} {shape}: {ms:.4} ms, {gbps:.0} GB/s ({:.0}% of {COPY_TBPS} TB/s copy) {anchor}",
            gbps / 10.0 / COPY_TBPS
        );
        println!(
            "BENCH {{\"name\":\"{name}\",\"shape\":\"{shape}\",\"ms\":{ms:.5},\"gbps\":{gbps:.1},\"tflops\":null}}"
        );
    };

    // (model, batch, length per sequence, d_ssm, conv_dim, in_proj width, anchor)
    let prefill = [
        (
            "7B",
            1usize,
            8192usize,
            3072usize,
            3584usize,
            6680usize,
            "(torch conv1d: 0.404 ms)",
        ),
        ("7B", 8, 4096, 3072, 3584, 6680, ""),
        ("0.5B", 1, 8192, 1536, 1792, 3352, ""),
    ];
    let k = 4;
    for (model, batch, len, d_ssm, c, width, anchor) in prefill {
        let tokens = batch * len;
        let proj = g.upload(&fresh(tokens * width)).unwrap();
        let dense = g.upload(&fresh(tokens * c)).unwrap();
        let w = g.upload(&fresh(c * k)).unwrap();
        let b = g.upload(&fresh(c)).unwrap();
        let mut st = g.upload(&fresh(batch * c * (k - 1))).unwrap();
        let cu: Vec<i32> = (0..=batch).map(|i| (i * len) as i32).collect();
        let cu = g.stream().clone_htod(&cu).unwrap();
        let mut out = g.zeros::<bf16>(tokens * c).unwrap();
        let dims = Conv1dDims {
            batch,
            tokens,
            channels: c,
            width: k,
            silu: true,
        };
        let bytes = (2 * tokens * c * 2) as f64;
        for (label, x) in [
            ("dense x", Strided::dense(&dense, c)),
            (
                "x = xBC columns of in_proj",
                Strided {
                    buf: &proj,
                    offset: d_ssm,
                    row_stride: width,
                },
            ),
        ] {
            let ms = time(&mut || {
                g.conv1d_fwd_into(
                    x,
                    &w,
                    Some(&b),
                    Some(&mut st),
                    Some(&cu),
                    None,
                    &mut out,
                    dims,
                )
                .unwrap()
            });
            report(
                "conv1d_fwd_bf16",
                &format!("{model} b{batch} L{len} C{c} K{k}, {label}"),
                ms,
                bytes,
                anchor,
            );
        }
    }

    for (model, batch, c) in [
        ("7B", 1usize, 3584usize),
        ("7B", 64, 3584),
        ("0.5B", 1, 1792),
    ] {
        let x = g.upload(&fresh(batch * c)).unwrap();
        let w = g.upload(&fresh(c * k)).unwrap();
        let b = g.upload(&fresh(c)).unwrap();
        let mut st = g.upload(&fresh(batch * c * (k - 1))).unwrap();
        let mut out = g.zeros::<bf16>(batch * c).unwrap();
        let dims = Conv1dDims {
            batch,
            tokens: batch,
            channels: c,
            width: k,
            silu: true,
        };
        let ms = time(&mut || {
            g.conv1d_update_into(
                Strided::dense(&x, c),
                &w,
                Some(&b),
                &mut st,
                None,
                &mut out,
                dims,
            )
            .unwrap()
        });
        let bytes = ((batch * c * (2 + 2 * (k - 1))) * 2) as f64;
        report(
            "conv1d_update_bf16",
            &format!("{model} b{batch} C{c} K{k}"),
            ms,
            bytes,
            "(launch bound)",
        );
    }
}
