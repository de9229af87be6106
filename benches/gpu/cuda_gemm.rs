//! Times `Gpu::linear_into` (cuBLASLt, bf16, f32 accumulation) at the Falcon-H1 7B projections,
//! prefill (L8192) and decode (b1, b32), and the SwiGLU / residual add kernels, next to the
//! ceilings of PERF.md (H200: 759 TFLOP/s bf16 GEMM, 4.15 TB/s copy). Plain `fn main()` bench
//! (harness = false): `cargo bench --features cuda --bench gpu -- cuda_gemm`.
//!
//! Every projection is timed twice: `linear_bf16` with the tuned algorithm (what
//! `Gpu::linear_into` runs; the shape is tuned in the warm-up), `linear_bf16_heuristic` with
//! cuBLASLt's first heuristic choice (as before tuning; `GemmTune::Heuristic`).
//!
//! Each figure is the median of 15 samples after warm-up; a sample times 10 back-to-back calls
//! between two CUDA events (so launch overhead counts only where the host cannot keep ahead of
//! the GPU, as at decode). Decode GEMMs cycle through enough copies of the weights (at least
//! 256 MB in all) that every call reads them from HBM, not L2, as one token of a real decode
//! step does. GB/s: weight bytes for the GEMMs; bytes read + written for the elementwise ops.

pub fn run() {
    use cudarc::driver::sys::CUevent_flags;
    use falcon_h1_kernels::config::{Config, Preset};
    use falcon_h1_kernels::cuda::conv1d::Strided;
    use falcon_h1_kernels::cuda::gemm::GemmTune;
    use falcon_h1_kernels::cuda::{CudaSlice, Gpu};
    use half::bf16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const GEMM_TFLOPS: f64 = 759.0;
    const COPY_TBPS: f64 = 4.15;
    const REPS: usize = 10;
    const SAMPLES: usize = 15;

    let g = Gpu::new(0).expect("benches/cuda_gemm.rs needs a CUDA GPU");
    println!("device: {}", g.name().unwrap_or_default());
    let mut rng = StdRng::seed_from_u64(1);
    let mut fresh = |n: usize, scale: f32| -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.random_range(-scale..scale)))
            .collect()
    };
    // Milliseconds per call: median over SAMPLES of (REPS calls between two events) / REPS.
    let time = |f: &mut dyn FnMut(usize)| -> f64 {
        for i in 0..3 {
            f(i);
        }
        g.synchronize().unwrap();
        let ctx = g.context();
        let mut v: Vec<f64> = (0..SAMPLES)
            .map(|_| {
                let a = ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .unwrap();
                let b = ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .unwrap();
                a.record(g.stream()).unwrap();
                for i in 0..REPS {
                    f(i);
                }
                b.record(g.stream()).unwrap();
                a.elapsed_ms(&b).unwrap() as f64 / REPS as f64
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };

    let c = Config::preset(Preset::P7B);
    let d = c.hidden_size;
    let attn_q = c.num_attention_heads * c.head_dim;
    let attn_kv = c.num_key_value_heads * c.head_dim;
    // (name, k, n, residual fused as beta = 1)
    let mut projections = vec![
        ("in_proj", d, c.in_proj_dim(), false),
        ("qkv_proj", d, attn_q + 2 * attn_kv, false),
        ("o_proj", attn_q, d, true),
        ("out_proj", c.mamba_d_ssm, d, true),
        ("gate_up_proj", d, 2 * c.intermediate_size, false),
        ("down_proj", c.intermediate_size, d, true),
    ];
    let prefill_count = projections.len();
    projections.push(("lm_head", d, c.vocab_size, false));

    for (rows, label) in [(8192usize, "L8192"), (1, "decode b1"), (32, "decode b32")] {
        let decode = rows <= 32;
        for (i, &(name, k, n, acc)) in projections.iter().enumerate() {
            if !decode && i >= prefill_count {
                continue; // prefill computes logits for the last token only
            }
            let wbytes = n * k * 2;
            let copies = if decode {
                (256usize << 20).div_ceil(wbytes).clamp(1, 16)
            } else {
                1
            };
            let scale = 1.0 / (k as f32).sqrt();
            let ws: Vec<CudaSlice<bf16>> = (0..copies)
                .map(|_| g.upload(&fresh(n * k, scale)).unwrap())
                .collect();
            let x = g.upload(&fresh(rows * k, 1.0)).unwrap();
            // Accumulating GEMMs read out: give them values; the others only write it.
            let mut out = if acc {
                g.upload(&fresh(rows * n, 1.0)).unwrap()
            } else {
                g.zeros::<bf16>(rows * n).unwrap()
            };
            // cuBLASLt's first heuristic choice (as before tuning), then the tuned algorithm
            // (what `linear_into` runs: the first warm-up call tunes the shape).
            let mut ms_of = |tune: GemmTune| {
                time(&mut |i| {
                    g.linear_into_with(
                        Strided::dense(&x, k),
                        &ws[i % copies],
                        &mut out,
                        rows,
                        k,
                        n,
                        acc,
                        tune,
                    )
                    .unwrap()
                })
            };
            let heuristic_ms = ms_of(GemmTune::Heuristic);
            let ms = ms_of(GemmTune::Auto);
            let flops = 2.0 * (rows * k * n) as f64;
            let shape = format!(
                "7B {name} {label}: x [{rows}, {k}] · w [{n}, {k}]^T{}",
                if acc { " + residual (beta 1)" } else { "" }
            );
            for (bench, ms) in [("linear_bf16", ms), ("linear_bf16_heuristic", heuristic_ms)] {
                let tflops = flops / ms / 1e9;
                let gbps = wbytes as f64 / ms / 1e6;
                let vs = if bench == "linear_bf16" {
                    format!(
                        " [tuned: {:.2}x cuBLASLt's first heuristic choice]",
                        heuristic_ms / ms
                    )
                } else {
                    String::new()
                };
                if decode {
                    println!(
                        "{bench} {shape}: {ms:.4} ms, {tflops:.1} TFLOP/s, {gbps:.0} GB/s of \
                         weights ({:.0}% of {COPY_TBPS} TB/s){vs}",
                        gbps / 10.0 / COPY_TBPS
                    );
                    println!(
                        "BENCH {{\"name\":\"{bench}\",\"shape\":\"{shape}\",\"ms\":{ms:.5},\
                         \"gbps\":{gbps:.1},\"tflops\":{tflops:.2}}}"
                    );
                } else {
                    println!(
                        "{bench} {shape}: {ms:.4} ms, {tflops:.1} TFLOP/s ({:.0}% of \
                         {GEMM_TFLOPS}){vs}",
                        tflops / GEMM_TFLOPS * 100.0
                    );
                    println!(
                        "BENCH {{\"name\":\"{bench}\",\"shape\":\"{shape}\",\"ms\":{ms:.5},\
                         \"gbps\":null,\"tflops\":{tflops:.2}}}"
                    );
                }
            }
        }
    }

    let report = |name: &str, shape: &str, ms: f64, bytes: f64| {
        let gbps = bytes / ms / 1e6;
        println!(
            "{name} {shape}: {ms:.4} ms, {gbps:.0} GB/s ({:.0}% of {COPY_TBPS} TB/s copy)",
            gbps / 10.0 / COPY_TBPS
        );
        println!(
            "BENCH {{\"name\":\"{name}\",\"shape\":\"{shape}\",\"ms\":{ms:.5},\"gbps\":{gbps:.1},\"tflops\":null}}"
        );
    };

    let inter = c.intermediate_size;
    for rows in [8192usize, 32] {
        // gate and up: the two column blocks of the fused gate_up projection's output.
        let fused = g.upload(&fresh(rows * 2 * inter, 4.0)).unwrap();
        let mut out = g.zeros::<bf16>(rows * inter).unwrap();
        let gate = Strided {
            buf: &fused,
            offset: 0,
            row_stride: 2 * inter,
        };
        let up = Strided {
            buf: &fused,
            offset: inter,
            row_stride: 2 * inter,
        };
        let ms = time(&mut |_| g.swiglu_into(gate, up, &mut out, rows, inter).unwrap());
        report(
            "swiglu_bf16",
            &format!("7B rows {rows}: gate/up blocks of [{rows}, {}]", 2 * inter),
            ms,
            (3 * rows * inter * 2) as f64,
        );

        let mut x = g.upload(&fresh(rows * d, 4.0)).unwrap();
        let y = g.upload(&fresh(rows * d, 4.0)).unwrap();
        let ms = time(&mut |_| g.add_into(&mut x, Strided::dense(&y, d), rows, d).unwrap());
        report(
            "add_bf16",
            &format!("7B rows {rows}: [{rows}, {d}] += [{rows}, {d}]"),
            ms,
            (3 * rows * d * 2) as f64,
        );
    }
}
