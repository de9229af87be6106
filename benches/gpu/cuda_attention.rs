//! Times the attention kernels at Falcon-H1 shapes next to the anchors of PERF.md (H200, bf16):
//! causal prefill (`Gpu::attention_prefill_mma_into`, the sm_80 kernels, and on compute
//! capability 9.0 also the Hopper kernels of `Gpu::attention_prefill_sm90_into`, named
//! `attn_prefill_sm90_bf16`), split-KV decode (`Gpu::attention_decode_into`: the fused kernel,
//! or both launches of the two-pass path when `FH1_ATTN_DECODE=two_pass`) and the RoPE + KV
//! append (`Gpu::kv_append`). Plain `fn main()` bench
//! (harness = false): `cargo bench --features cuda --bench gpu -- cuda_attention`.
//!
//! Each figure is the median of 15 samples after warm-up; a sample times REPS back-to-back calls
//! between two CUDA events, recorded behind a ~1 GB memset so that the host has queued the calls
//! before the GPU reaches them (launch overhead does not count; in the model the step is a CUDA
//! graph). Prefill: TFLOP/s with FLOPs = 4 b Hq L^2 hd / 2 (causal), against 759 TFLOP/s. Decode:
//! GB/s of KV (K and V bytes read once) against the 4.15 TB/s copy ceiling; at b1 the calls
//! rotate over 8 cache slots (268 MB) so that the keys come from HBM, not the 50 MB L2.
//! kv_append: bytes = q read + written, k and v read, cache rows written.

pub fn run() {
    use cudarc::driver::sys::CUevent_flags;
    use falcon_h1_kernels::cuda::attention::AttnBatch;
    use falcon_h1_kernels::cuda::conv1d::Strided;
    use falcon_h1_kernels::cuda::Gpu;
    use half::bf16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const GEMM_TFLOPS: f64 = 759.0;
    const COPY_TBPS: f64 = 4.15;
    const REPS: usize = 10;
    const SAMPLES: usize = 15;

    let g = Gpu::new(0).expect("benches/cuda_attention.rs needs a CUDA GPU");
    println!("device: {}", g.name().unwrap_or_default());
    let mut rng = StdRng::seed_from_u64(1);
    let fresh = |rng: &mut StdRng, n: usize| -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.random_range(-2.0..2.0)))
            .collect()
    };
    let mut filler = g
        .stream()
        .alloc_zeros::<u8>(1 << 30)
        .expect("1 GB filler buffer");
    // Milliseconds per call: median over SAMPLES of (REPS calls between two events) / REPS.
    // `f` returns false when the kernel is missing (reported once, then skipped).
    let mut time = |f: &mut dyn FnMut(usize) -> bool| -> Option<f64> {
        for i in 0..3 {
            if !f(i) {
                return None;
            }
        }
        g.synchronize().unwrap();
        let ctx = g.context();
        let mut v: Vec<f64> = (0..SAMPLES)
            .map(|_| {
                g.stream().memset_zeros(&mut filler).unwrap();
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
        Some(v[v.len() / 2])
    };
    let bench_line = |name: &str, shape: &str, ms: f64, gbps: Option<f64>, tflops: Option<f64>| {
        let num = |x: Option<f64>| x.map_or("null".to_string(), |v| format!("{v:.1}"));
        println!(
            "BENCH {{\"name\":\"{name}\",\"shape\":\"{shape}\",\"ms\":{ms:.5},\"gbps\":{},\"tflops\":{}}}",
            num(gbps),
            num(tflops)
        );
    };
    let ok = |r: falcon_h1_kernels::error::Result<()>, what: &str| -> bool {
        match r {
            Ok(()) => true,
            Err(e) => {
                println!("{what}: skipped: {e}");
                false
            }
        }
    };

    // Fills `slots` slots of a new cache with `len` tokens each (random K/V through kv_append)
    // and returns (cache, q of the last fill, batch of that fill, inv_freq).
    struct Filled {
        cache: falcon_h1_kernels::cuda::attention::GpuKvCache<bf16>,
        q: falcon_h1_kernels::cuda::CudaSlice<bf16>,
        batch: AttnBatch,
    }
    let fill =
        |rng: &mut StdRng, b: usize, len: usize, hq: usize, hkv: usize, hd: usize, cap: usize| {
            let tokens = b * len;
            let inv = g.rope_inv_freq(hd, 1e11).unwrap();
            let mut cache = g.kv_cache::<bf16>(b, cap, hkv, hd).unwrap();
            let mut q = g.upload(&fresh(rng, tokens * hq * hd)).unwrap();
            let k = g.upload(&fresh(rng, tokens * hkv * hd)).unwrap();
            let v = g.upload(&fresh(rng, tokens * hkv * hd)).unwrap();
            let slots: Vec<usize> = (0..b).collect();
            let batch = g
                .attn_batch(&slots, &vec![len; b], &vec![0; b], b, cap)
                .unwrap();
            g.kv_append(
                &mut q,
                Strided::dense(&k, hkv * hd),
                Strided::dense(&v, hkv * hd),
                &inv,
                &mut cache,
                &batch,
                hq,
                1.0,
            )
            .unwrap();
            Filled { cache, q, batch }
        };

    // Prefill: (model, batch, L, Hq, Hkv, hd, anchor FA2 ms, anchor cuDNN ms)
    let prefill = [
        (
            "7B", 1usize, 8192usize, 12usize, 2usize, 128usize, 0.800, 0.421,
        ),
        ("7B", 1, 32768, 12, 2, 128, 9.73, 4.98),
        ("7B", 8, 4096, 12, 2, 128, 1.50, 0.77),
        ("0.5B", 1, 8192, 8, 2, 64, 0.383, 0.233),
        ("34B", 1, 8192, 20, 4, 128, 1.24, 0.626),
    ];
    // The sm90 kernels are timed next to the sm_80 ones on a compute capability 9.0 device.
    let sm90 = g.attention_sm90_supported().unwrap_or(false);
    if !sm90 {
        println!("attn_prefill_sm90_bf16: skipped, the device is not compute capability 9.0");
    }
    for (model, b, l, hq, hkv, hd, fa2, cudnn) in prefill {
        let shape = format!("{model} b{b} L{l} Hq{hq} Hkv{hkv} d{hd}");
        let f = fill(&mut rng, b, l, hq, hkv, hd, l);
        let mut out = g.zeros::<bf16>(b * l * hq * hd).unwrap();
        let Some(ms) = time(&mut |_| {
            ok(
                g.attention_prefill_mma_into(&f.q, &f.cache, &f.batch, hq, &mut out),
                "attn_fwd_bf16",
            )
        }) else {
            continue;
        };
        let flops = 4.0 * (b * hq * hd) as f64 * (l as f64) * (l as f64) / 2.0;
        let tf = flops / ms / 1e9;
        let tf_at = |anchor_ms: f64| flops / anchor_ms / 1e9;
        println!(
            "attn_fwd_bf16 {shape}: {ms:.4} ms, {tf:.0} TFLOP/s ({:.0}% of {GEMM_TFLOPS}); \
             anchors FA2 {fa2} ms ({:.0} TFLOP/s), cuDNN {cudnn} ms ({:.0} TFLOP/s)",
            100.0 * tf / GEMM_TFLOPS,
            tf_at(fa2),
            tf_at(cudnn)
        );
        bench_line("attn_fwd_bf16", &shape, ms, None, Some(tf));

        // The Hopper kernels on the same inputs (compute capability 9.0 only).
        if !sm90 {
            continue;
        }
        let Some(ms) = time(&mut |_| {
            ok(
                g.attention_prefill_sm90_into(&f.q, &f.cache, &f.batch, hq, &mut out),
                "attn_prefill_sm90_bf16",
            )
        }) else {
            continue;
        };
        let tf = flops / ms / 1e9;
        println!(
            "attn_prefill_sm90_bf16 {shape}: {ms:.4} ms, {tf:.0} TFLOP/s ({:.0}% of \
             {GEMM_TFLOPS}); anchors FA2 {fa2} ms, cuDNN {cudnn} ms",
            100.0 * tf / GEMM_TFLOPS
        );
        bench_line("attn_prefill_sm90_bf16", &shape, ms, None, Some(tf));
    }

    // Decode: (model, batch, cached tokens, Hq, Hkv, hd, anchor SDPA ms if measured)
    let decode = [
        (
            "7B",
            1usize,
            32768usize,
            12usize,
            2usize,
            128usize,
            Some(0.068),
        ),
        ("7B", 32, 8192, 12, 2, 128, Some(0.100)),
        ("7B", 1, 131_072, 12, 2, 128, None),
        // GQA 6 at head dim 64 (the decode kernels' g6 hd64 instance).
        ("GQA6-d64", 1, 32768, 12, 2, 64, None),
    ];
    for (model, b, cached, hq, hkv, hd, anchor) in decode {
        let shape = format!("{model} b{b} {cached} cached Hq{hq} Hkv{hkv} d{hd}");
        // b1: 8 copies (slots) of the sequence, one per call in turn, so the KV is not L2 resident.
        let copies = if b == 1 { 8 } else { 1 };
        let slots_total = b * copies;
        let cap = cached + 1;
        let cache = {
            // Fill every slot: one prefill batch over all of them.
            // Hq = Hkv for the fill: the cache does not depend on Hq, and q stays small.
            let f = fill(&mut rng, slots_total, cap, hkv, hkv, hd, cap);
            f.cache
        };
        let q = g.upload(&fresh(&mut rng, b * hq * hd)).unwrap();
        let mut out = g.zeros::<bf16>(b * hq * hd).unwrap();
        let batches: Vec<AttnBatch> = (0..copies)
            .map(|c| {
                let slots: Vec<usize> = (0..b).map(|i| c * b + i).collect();
                g.attn_batch(&slots, &vec![1; b], &vec![cached; b], slots_total, cap)
                    .unwrap()
            })
            .collect();
        let mut scratch = g.decode_scratch(b, hq, hd, cap).unwrap();
        let splits = scratch.num_splits(hkv);
        let Some(ms) = time(&mut |i| {
            ok(
                g.attention_decode_into(
                    &q,
                    &cache,
                    &batches[i % copies],
                    hq,
                    &mut scratch,
                    &mut out,
                ),
                "attn_decode_bf16",
            )
        }) else {
            continue;
        };
        let bytes = (2 * b * cap * hkv * hd * 2) as f64;
        let gbps = bytes / ms / 1e6;
        let anchor = anchor.map_or("no anchor".to_string(), |a| {
            format!("anchor SDPA flash {a} ms ({:.0} GB/s)", bytes / a / 1e6)
        });
        let path = std::env::var(falcon_h1_kernels::cuda::attention::ATTN_DECODE_ENV)
            .unwrap_or_else(|_| "fused".to_string());
        println!(
            "attn_decode_bf16 {shape} ({splits} splits, {path}): {ms:.4} ms, {gbps:.0} GB/s of KV \
             ({:.0}% of {COPY_TBPS} TB/s); {anchor}; target 3300 GB/s",
            gbps / 10.0 / COPY_TBPS,
        );
        bench_line("attn_decode_bf16", &shape, ms, Some(gbps), None);
    }

    // kv_append at 7B L8192.
    {
        let (l, hq, hkv, hd) = (8192usize, 12usize, 2usize, 128usize);
        let shape = format!("7B b1 L{l} Hq{hq} Hkv{hkv} d{hd}");
        let inv = g.rope_inv_freq(hd, 1e11).unwrap();
        let mut cache = g.kv_cache::<bf16>(1, l, hkv, hd).unwrap();
        let mut q = g.upload(&fresh(&mut rng, l * hq * hd)).unwrap();
        let k = g.upload(&fresh(&mut rng, l * hkv * hd)).unwrap();
        let v = g.upload(&fresh(&mut rng, l * hkv * hd)).unwrap();
        let batch = g.attn_batch(&[0], &[l], &[0], 1, l).unwrap();
        if let Some(ms) = time(&mut |_| {
            ok(
                g.kv_append(
                    &mut q,
                    Strided::dense(&k, hkv * hd),
                    Strided::dense(&v, hkv * hd),
                    &inv,
                    &mut cache,
                    &batch,
                    hq,
                    1.0,
                ),
                "kv_append_bf16",
            )
        }) {
            let bytes = ((2 * l * hq * hd + 4 * l * hkv * hd) * 2) as f64;
            let gbps = bytes / ms / 1e6;
            println!(
                "kv_append_bf16 {shape}: {ms:.4} ms, {gbps:.0} GB/s ({:.0}% of {COPY_TBPS} TB/s); \
                 target 3000 GB/s",
                gbps / 10.0 / COPY_TBPS
            );
            bench_line("kv_append_bf16", &shape, ms, Some(gbps), None);
        }
    }
}
