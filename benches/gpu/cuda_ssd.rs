//! Times the SSD chunked prefill kernels (kernels/ssd.cu) at the Falcon-H1 shapes of PERF.md,
//! next to the Triton anchor measured on an H200. Plain `fn main()` bench (harness = false):
//! `cargo bench --features cuda --bench gpu -- cuda_ssd`.

pub fn run() {
    use falcon_h1_kernels::cuda::ssd::{Cols, SsdCudaDims, SsdCudaInputs};
    use falcon_h1_kernels::cuda::Gpu;
    use half::bf16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::Instant;

    struct Shape {
        name: &'static str,
        batch: usize,
        len: usize,
        heads: usize,
        head_dim: usize,
        groups: usize,
        state: usize,
        chunk: usize,
        triton_ms: f64,
    }
    let shapes = [
        Shape {
            name: "7B",
            batch: 1,
            len: 8192,
            heads: 24,
            head_dim: 128,
            groups: 1,
            state: 256,
            chunk: 128,
            triton_ms: 0.595,
        },
        Shape {
            name: "7B",
            batch: 1,
            len: 32768,
            heads: 24,
            head_dim: 128,
            groups: 1,
            state: 256,
            chunk: 128,
            triton_ms: 1.527,
        },
        Shape {
            name: "7B",
            batch: 8,
            len: 4096,
            heads: 24,
            head_dim: 128,
            groups: 1,
            state: 256,
            chunk: 128,
            triton_ms: 1.412,
        },
        Shape {
            name: "0.5B",
            batch: 1,
            len: 8192,
            heads: 24,
            head_dim: 64,
            groups: 1,
            state: 128,
            chunk: 128,
            triton_ms: 0.710,
        },
        Shape {
            name: "34B",
            batch: 1,
            len: 8192,
            heads: 32,
            head_dim: 128,
            groups: 2,
            state: 256,
            chunk: 128,
            triton_ms: 0.996,
        },
    ];
    const H200_TBPS: f64 = 4.15;
    const H200_TFLOPS: f64 = 759.0;
    const RUNS: usize = 20;

    let gpu = Gpu::new(0).unwrap_or_else(|e| panic!("benches/cuda_ssd.rs needs a CUDA GPU: {e}"));
    println!("device: {}", gpu.name().unwrap_or_default());
    let mut rng = StdRng::seed_from_u64(7);
    let draw = |rng: &mut StdRng, n: usize, lo: f32, hi: f32| -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.random_range(lo..hi)))
            .collect()
    };
    for s in &shapes {
        let (h, p, g, n, q) = (s.heads, s.head_dim, s.groups, s.state, s.chunk);
        let t = s.batch * s.len;
        let x = gpu.upload(&draw(&mut rng, t * h * p, -1.0, 1.0)).unwrap();
        // Raw dt around -4 (softplus ~ 0.02), as the model's projections give.
        let dt = gpu.upload(&draw(&mut rng, t * h, -6.0, -2.0)).unwrap();
        let b = gpu.upload(&draw(&mut rng, t * g * n, -1.0, 1.0)).unwrap();
        let c = gpu.upload(&draw(&mut rng, t * g * n, -1.0, 1.0)).unwrap();
        let dt_bias = gpu.upload(&draw(&mut rng, h, -0.5, 0.5)).unwrap();
        let a_log = gpu.upload(&draw(&mut rng, h, 0.0, 2.7)).unwrap();
        let d = gpu.upload(&draw(&mut rng, h, 0.5, 1.5)).unwrap();
        let init: Vec<f32> = (0..s.batch * h * p * n)
            .map(|_| rng.random_range(-1f32..1.0))
            .collect();
        let mut state = gpu.upload(&init).unwrap();
        let mut y = gpu.zeros::<bf16>(t * h * p).unwrap();
        let inp = SsdCudaInputs {
            x: Cols::dense(&x, h * p),
            dt: Cols::dense(&dt, h),
            dt_bias: &dt_bias,
            a_log: &a_log,
            b: Cols::dense(&b, g * n),
            c: Cols::dense(&c, g * n),
            d: Some(&d),
        };
        let dims = SsdCudaDims {
            heads: h,
            head_dim: p,
            groups: g,
            state: n,
            chunk_size: q,
            dt_limit: (0.0, f32::INFINITY),
        };
        let cu: Vec<usize> = (0..=s.batch).map(|i| i * s.len).collect();
        // The model's way: one plan (chunk table + scratch) per batch layout, reused by every
        // layer; the one-shot call (upload + allocation each time) is timed too.
        let mut plan = gpu.ssd_plan::<bf16>(dims, &cu, None).unwrap();
        let mut time = |planned: bool| {
            let mut call = || {
                if planned {
                    gpu.ssd_chunked_planned(&mut plan, &inp, &mut state, true, &mut y)
                } else {
                    gpu.ssd_chunked(&inp, dims, &cu, None, &mut state, true, &mut y)
                }
                .unwrap()
            };
            for _ in 0..3 {
                call();
            }
            gpu.synchronize().unwrap();
            let t0 = Instant::now();
            for _ in 0..RUNS {
                call();
            }
            gpu.synchronize().unwrap();
            t0.elapsed().as_secs_f64() * 1e3 / RUNS as f64
        };
        let ms = time(true);
        let ms_oneshot = time(false);

        // PERF.md counts: FLOPs per chunk and head 2QQN + 2QQP + 4QNP (full chunks);
        // bytes: x, dt, B, C read and y written once, the initial state read and final written.
        let chunks = s.batch * s.len.div_ceil(q);
        let flops = (chunks * h) as f64
            * (2.0 * (q * q * n) as f64 + 2.0 * (q * q * p) as f64 + 4.0 * (q * n * p) as f64);
        let es = std::mem::size_of::<bf16>();
        let bytes =
            (2 * t * h * p * es + t * h * es + 2 * t * g * n * es + 2 * s.batch * h * p * n * 4)
                as f64;
        let tflops = flops / ms / 1e9;
        let gbps = bytes / ms / 1e6;
        let shape = format!(
            "{} b{} L{} H{} P{} N{} G{} chunk{}",
            s.name, s.batch, s.len, h, p, n, g, q
        );
        println!(
            "ssd_chunked bf16 {shape}: {ms:.3} ms, {tflops:.1} TFLOP/s ({:.1}% of {H200_TFLOPS}), \
             {gbps:.0} GB/s ({:.1}% of {H200_TBPS} TB/s); Triton (H200) {:.3} ms = {:.2}x",
            100.0 * tflops / H200_TFLOPS,
            100.0 * gbps / (H200_TBPS * 1e3),
            s.triton_ms,
            s.triton_ms / ms
        );
        println!("  (one-shot ssd_chunked, uploading the chunk table and allocating scratch per call: {ms_oneshot:.3} ms)");
        println!(
            "BENCH {{\"name\":\"ssd_chunked_bf16\",\"shape\":\"{shape}\",\"ms\":{ms:.4},\"gbps\":{gbps:.1},\"tflops\":{tflops:.2}}}"
        );
    }
}
