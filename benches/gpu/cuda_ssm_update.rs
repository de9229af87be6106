//! Times the one-token SSM state update (kernels/ssm_update.cu) at Falcon-H1 shapes, next to the
//! Triton anchor of PERF.md (H200). Plain `fn main()` bench (harness = false):
//! `cargo bench --features cuda --bench gpu -- cuda_ssm_update`.
//! Bytes counted: the state read and written once, plus x, z, y, B, C, dt (each once).

pub fn run() {
    use falcon_h1_kernels::cuda::conv1d::Strided;
    use falcon_h1_kernels::cuda::ssm_update::{SsmStateDtype, SsmUpdateCudaDims, SsmUpdateInputs};
    use falcon_h1_kernels::cuda::{Gpu, GpuDtype};
    use half::bf16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::Instant;

    const COPY_TBPS: f64 = 4.15;
    let g = Gpu::new(0).expect("benches/cuda_ssm_update.rs needs a CUDA GPU");
    println!("device: {}", g.name().unwrap_or_default());

    fn fresh<T: GpuDtype>(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<T> {
        (0..n)
            .map(|_| T::from_f32(rng.random_range(lo..hi)))
            .collect()
    }

    fn run<S: SsmStateDtype>(g: &Gpu, rng: &mut StdRng, model: &str, batch: usize, anchor: &str) {
        let (h, p, gr, n) = match model {
            "0.5B" => (24, 64, 1, 128),
            _ => (24, 128, 1, 256),
        };
        let dims = SsmUpdateCudaDims {
            batch,
            heads: h,
            head_dim: p,
            groups: gr,
            state: n,
        };
        // One projection row per sequence: z | x | B | C | dt, as in_proj lays them out.
        let width = 2 * h * p + 2 * gr * n + h;
        let mut proj: Vec<bf16> = fresh(rng, batch * width, -1.0, 1.0);
        for r in 0..batch {
            for j in 0..h {
                proj[r * width + 2 * h * p + 2 * gr * n + j] =
                    bf16::from_f32(rng.random_range(-6.0..-2.0));
            }
        }
        let proj = g.upload(&proj).unwrap();
        let dtb = g.upload(&fresh::<bf16>(rng, h, -0.5, 0.5)).unwrap();
        let al = g.upload(&fresh::<bf16>(rng, h, -1.0, 1.5)).unwrap();
        let d = g.upload(&fresh::<bf16>(rng, h, -1.0, 1.0)).unwrap();
        let mut st = g
            .upload(&fresh::<S>(rng, batch * h * p * n, -1.0, 1.0))
            .unwrap();
        let mut y = g.zeros::<bf16>(batch * h * p).unwrap();
        let col = |offset| Strided {
            buf: &proj,
            offset,
            row_stride: width,
        };
        let inp = SsmUpdateInputs {
            x: col(h * p),
            dt: col(2 * h * p + 2 * gr * n),
            dt_bias: &dtb,
            a_log: &al,
            b: col(2 * h * p),
            c: col(2 * h * p + gr * n),
            d: Some(&d),
            z: Some(col(0)),
            dt_limit: (0.0, f32::INFINITY),
            slot_idx: None,
        };
        for _ in 0..5 {
            g.ssm_update(&mut st, &inp, &mut y, dims).unwrap();
        }
        g.synchronize().unwrap();
        let mut v: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                g.ssm_update(&mut st, &inp, &mut y, dims).unwrap();
                g.synchronize().unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(f64::total_cmp);
        let ms = v[v.len() / 2];
        let state_bytes = (2 * batch * h * p * n * std::mem::size_of::<S>()) as f64;
        let io_bytes = (batch * (3 * h * p + 2 * gr * n + h) * 2) as f64;
        let gbps = (state_bytes + io_bytes) / ms / 1e6;
        let name = format!("ssm_update_bf16_state_{}", S::SUFFIX);
        let shape = format!("{model} b{batch} H{h} P{p} N{n} G{gr}");
        println!(
            "{name} {shape}: {ms:.4} ms ({:.1} us), {gbps:.0} GB/s ({:.0}% of {COPY_TBPS} TB/s copy) {anchor}",
            ms * 1e3,
            gbps / 10.0 / COPY_TBPS
        );
        println!(
            "BENCH {{\"name\":\"{name}\",\"shape\":\"{shape}\",\"ms\":{ms:.5},\"gbps\":{gbps:.1},\"tflops\":null}}"
        );
    }

    let mut rng = StdRng::seed_from_u64(2);
    run::<f32>(&g, &mut rng, "7B", 1, "(Triton: 0.144 ms; target < 10 us)");
    run::<f32>(
        &g,
        &mut rng,
        "7B",
        64,
        "(Triton: 0.248 ms = 1.62 TB/s; target 3.3 TB/s)",
    );
    run::<f32>(&g, &mut rng, "7B", 32, "");
    run::<f32>(&g, &mut rng, "0.5B", 1, "");
    run::<bf16>(&g, &mut rng, "7B", 1, "");
    run::<bf16>(&g, &mut rng, "7B", 64, "");
}
