//! `Gpu::linear_into` (cuBLASLt) against `cpu::linear` on the T-rounded inputs, in f32, bf16 and
//! f16, on awkward sizes, with dense and strided x (a column block of a wider buffer at an odd
//! offset: 2-byte aligned for bf16/f16) and with the fused accumulate (beta = 1). Built only
//! with `--features cuda` and meant for a GPU machine: where there is no GPU or driver every test
//! here fails, saying so. Plain outputs are poisoned with NaN first (beta = 0 must not read them);
//! accumulated ones start from known values.
//!
//! Algorithm tuning (the first call for a shape times cuBLASLt's candidates on the real operands):
//! tuned, cached and heuristic-only calls all match the CPU, a fused residual (beta = 1) is added
//! exactly once per call even on the call that tunes, and nothing is tuned inside a CUDA graph
//! capture. Shapes used by the tuning tests appear nowhere else here, so each test knows whether
//! its call finds the shape cached (the cache is per process and the tests run in parallel).

use crate::common;

use common::gpu_check::{compare, gpu, to_f32, to_t};

use falcon_h1_kernels::cpu;
use falcon_h1_kernels::cuda::conv1d::Strided;
use falcon_h1_kernels::cuda::gemm::{GemmDtype, GemmTune};
use falcon_h1_kernels::cuda::{Gpu, GpuDtype};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: [usize; 3] = [1, 3, 129];
const KS: [usize; 2] = [64, 1000];
const NS: [usize; 2] = [1, 513];

/// Draws values, rounded to `T` so that the CPU reference sees exactly what the GPU sees.
fn draw<T: GpuDtype>(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| T::from_f32(rng.random_range(-scale..scale)).to_f32())
        .collect()
}

/// How x is laid out in its buffer.
#[derive(Clone, Copy, Debug)]
enum XLayout {
    Dense,
    /// Columns `offset..offset + k` of a `[rows, k + pad]` buffer (offset odd).
    Block {
        offset: usize,
        pad: usize,
    },
}

#[allow(clippy::too_many_arguments)]
fn check<T: GemmDtype>(
    g: &Gpu,
    rows: usize,
    k: usize,
    n: usize,
    layout: XLayout,
    accumulate: bool,
    tol: f64,
    seed: u64,
) {
    check_with::<T>(g, rows, k, n, layout, accumulate, tol, seed, GemmTune::Auto);
}

/// [`check`] with the algorithm picked as `tune` says.
#[allow(clippy::too_many_arguments)]
fn check_with<T: GemmDtype>(
    g: &Gpu,
    rows: usize,
    k: usize,
    n: usize,
    layout: XLayout,
    accumulate: bool,
    tol: f64,
    seed: u64,
    tune: GemmTune,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (offset, stride) = match layout {
        XLayout::Dense => (0, k),
        XLayout::Block { offset, pad } => (offset, k + pad),
    };
    // The whole buffer, then the [rows, k] matrix the view selects.
    let xbuf = draw::<T>(&mut rng, offset + rows * stride, 1.0);
    let x: Vec<f32> = (0..rows)
        .flat_map(|r| {
            xbuf[offset + r * stride..offset + r * stride + k]
                .iter()
                .copied()
        })
        .collect();
    let w = draw::<T>(&mut rng, n * k, 1.0 / (k as f32).sqrt());
    let c0 = draw::<T>(&mut rng, rows * n, 1.0);

    let mut want = cpu::linear(&x, &w, rows, k, n).unwrap();
    if accumulate {
        want.iter_mut().zip(&c0).for_each(|(v, &c)| *v += c);
    }

    let dx = g.upload(&to_t::<T>(&xbuf)).unwrap();
    let dw = g.upload(&to_t::<T>(&w)).unwrap();
    let start = if accumulate {
        to_t::<T>(&c0)
    } else {
        vec![T::from_f32(f32::NAN); rows * n]
    };
    let mut dout = g.upload(&start).unwrap();
    let view = Strided {
        buf: &dx,
        offset,
        row_stride: stride,
    };
    g.linear_into_with(view, &dw, &mut dout, rows, k, n, accumulate, tune)
        .unwrap();
    g.synchronize().unwrap();
    let what = format!(
        "linear_{} x [{rows}, {k}] ({layout:?}) · w [{n}, {k}]^T{} ({tune:?})",
        T::SUFFIX,
        if accumulate { " + out" } else { "" }
    );
    compare(&what, &to_f32(&g.download(&dout).unwrap()), &want, n, tol);
}

fn sweep<T: GemmDtype>(tol: f64) {
    let g = gpu();
    let mut seed = 0;
    for &rows in &ROWS {
        for &k in &KS {
            for &n in &NS {
                for layout in [XLayout::Dense, XLayout::Block { offset: 5, pad: 37 }] {
                    for accumulate in [false, true] {
                        seed += 1;
                        check::<T>(&g, rows, k, n, layout, accumulate, tol, seed);
                    }
                }
            }
        }
    }
}

/// f32 stays f32: `CUBLAS_COMPUTE_32F`, not cudarc's TF32 default (which would miss 1e-5).
#[test]
fn linear_f32_matches_cpu() {
    sweep::<f32>(1e-5);
}

#[test]
fn linear_bf16_matches_cpu() {
    sweep::<half::bf16>(1e-2);
}

#[test]
fn linear_f16_matches_cpu() {
    sweep::<half::f16>(1e-2);
}

/// A 16-byte aligned column block (offset and stride multiples of 8) and a model-sized shape:
/// the tensor-core path with a strided B.
#[test]
fn linear_bf16_aligned_block_and_larger_shape() {
    let g = gpu();
    check::<half::bf16>(
        &g,
        256,
        3072,
        1024,
        XLayout::Block {
            offset: 512,
            pad: 1024,
        },
        false,
        1e-2,
        100,
    );
    check::<half::bf16>(&g, 200, 1536, 3072, XLayout::Dense, true, 1e-2, 101);
}

/// The same shape again (the second call takes the cached algorithm) on other values: both
/// match the CPU.
#[test]
fn linear_cached_algorithm_matches_cpu() {
    let g = gpu();
    for seed in [9, 10, 11] {
        check::<half::bf16>(&g, 33, 640, 129, XLayout::Dense, false, 1e-2, seed);
        check::<half::bf16>(
            &g,
            33,
            640,
            129,
            XLayout::Block { offset: 3, pad: 7 },
            true,
            1e-2,
            seed + 10,
        );
    }
}

/// Each shape tuned (forced, with beta = 0 and beta = 1), then again from the cache, then with
/// the heuristic's first choice only: every result matches the CPU, so the timing runs of the
/// tuned call neither leave anything in a plain output nor add the residual more than once.
#[test]
fn linear_tuned_then_cached_adds_residual_once() {
    let g = gpu();
    let mut seed = 200;
    for (rows, k, n, layout) in [
        (1usize, 352usize, 328usize, XLayout::Dense),
        (6, 416, 264, XLayout::Block { offset: 8, pad: 24 }),
        (40, 288, 136, XLayout::Block { offset: 3, pad: 5 }),
    ] {
        for accumulate in [true, false] {
            for tune in [GemmTune::Retune, GemmTune::Auto, GemmTune::Heuristic] {
                seed += 1;
                check_with::<half::bf16>(&g, rows, k, n, layout, accumulate, 1e-2, seed, tune);
                check_with::<f32>(&g, rows, k, n, layout, accumulate, 1e-5, seed, tune);
            }
        }
    }
}

/// `out += x · w^T` three times on one stream without waiting, the first call tuning the shape
/// (its candidates' timing runs among the enqueued work) and the others taking the cached
/// winner, then once with the heuristic's first: out = c0 + 4 x w^T, the residual chain
/// intact.
#[test]
fn linear_accumulates_once_per_call_while_tuning() {
    let g = gpu();
    let (rows, k, n) = (3usize, 608usize, 232usize);
    let mut rng = StdRng::seed_from_u64(300);
    let x = draw::<f32>(&mut rng, rows * k, 1.0);
    let w = draw::<f32>(&mut rng, n * k, 1.0 / (k as f32).sqrt());
    let c0 = draw::<f32>(&mut rng, rows * n, 1.0);
    let xw = cpu::linear(&x, &w, rows, k, n).unwrap();
    let want: Vec<f32> = xw.iter().zip(&c0).map(|(&p, &c)| c + 4.0 * p).collect();

    let dx = g.upload(&x).unwrap();
    let dw = g.upload(&w).unwrap();
    let mut dout = g.upload(&c0).unwrap();
    for tune in [
        GemmTune::Retune,
        GemmTune::Auto,
        GemmTune::Auto,
        GemmTune::Heuristic,
    ] {
        g.linear_into_with(
            Strided::dense(&dx, k),
            &dw,
            &mut dout,
            rows,
            k,
            n,
            true,
            tune,
        )
        .unwrap();
    }
    g.synchronize().unwrap();
    compare(
        "linear_f32 4 x (out += x w^T), tuned then cached then heuristic",
        &g.download(&dout).unwrap(),
        &want,
        n,
        1e-5,
    );
}

/// A GEMM captured into a CUDA graph on a shape known but not yet tuned: the capture must not
/// tune (timing waits for the stream and allocates, which would break the capture); the graph
/// then adds the residual once per launch, and the first call after the capture tunes the shape
/// and still matches.
#[test]
fn linear_in_graph_capture_does_not_tune() {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let g = gpu();
    let (rows, k, n) = (2usize, 736usize, 312usize);
    let mut rng = StdRng::seed_from_u64(400);
    let x = draw::<f32>(&mut rng, rows * k, 1.0);
    let w = draw::<f32>(&mut rng, n * k, 1.0 / (k as f32).sqrt());
    let c0 = draw::<f32>(&mut rng, rows * n, 1.0);
    let xw = cpu::linear(&x, &w, rows, k, n).unwrap();
    let plus =
        |times: f32| -> Vec<f32> { xw.iter().zip(&c0).map(|(&p, &c)| c + times * p).collect() };

    let dx = g.upload(&x).unwrap();
    let dw = g.upload(&w).unwrap();
    let mut dout = g.upload(&c0).unwrap();
    // Outside the capture: the heuristic's first choice, cached untuned (and the workspace
    // allocated if it needs one), as a model's first step would leave a shape it never tuned.
    g.linear_into_with(
        Strided::dense(&dx, k),
        &dw,
        &mut dout,
        rows,
        k,
        n,
        true,
        GemmTune::Heuristic,
    )
    .unwrap();
    g.synchronize().unwrap();

    let stream = g.stream().clone();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    // Auto would tune this untuned shape outside a capture; inside it must not.
    let r = g.linear_into(Strided::dense(&dx, k), &dw, &mut dout, rows, k, n, true);
    let graph = stream.end_capture(CUgraphInstantiate_flags(0));
    r.unwrap();
    let graph = graph.unwrap().expect("the capture recorded the GEMM");
    // Nothing ran yet: out holds c0 + x w^T.
    compare(
        "linear_f32 before the graph's launch",
        &g.download(&dout).unwrap(),
        &plus(1.0),
        n,
        1e-5,
    );
    graph.launch().unwrap();
    g.synchronize().unwrap();
    compare(
        "linear_f32 out += x w^T captured in a graph, launched once",
        &g.download(&dout).unwrap(),
        &plus(2.0),
        n,
        1e-5,
    );
    graph.launch().unwrap();
    // After the capture: this call tunes the shape (timing into a scratch output).
    g.linear_into(Strided::dense(&dx, k), &dw, &mut dout, rows, k, n, true)
        .unwrap();
    g.synchronize().unwrap();
    compare(
        "linear_f32 graph launched twice, then tuned outside the capture",
        &g.download(&dout).unwrap(),
        &plus(4.0),
        n,
        1e-5,
    );
    drop(graph);
}

#[test]
fn linear_rejects_bad_shapes() {
    let g = gpu();
    let x = g.upload(&[1f32; 12]).unwrap();
    let w = g.upload(&[1f32; 8]).unwrap();
    let mut out = g.upload(&[0f32; 6]).unwrap();
    let err = |r: falcon_h1_kernels::Result<()>| r.unwrap_err().to_string();
    let dense = Strided::dense(&x, 4);

    // x [3, 4] · w [2, 4]^T = out [3, 2] is the valid call.
    g.linear_into(dense, &w, &mut out, 3, 4, 2, false).unwrap();
    g.synchronize().unwrap();

    let e = err(g.linear_into(dense, &w, &mut out, 0, 4, 2, false));
    assert!(e.contains("empty"), "{e}");
    let e = err(g.linear_into(dense, &w, &mut out, 3, 0, 2, false));
    assert!(e.contains("empty"), "{e}");
    let e = err(g.linear_into(dense, &w, &mut out, 3, 4, 0, false));
    assert!(e.contains("empty"), "{e}");
    // x too short for 4 rows.
    let e = err(g.linear_into(dense, &w, &mut out, 4, 4, 2, false));
    assert!(e.contains("`x` has 12"), "{e}");
    // w is [2, 4], not [3, 4].
    let mut out9 = g.upload(&[0f32; 9]).unwrap();
    let e = err(g.linear_into(dense, &w, &mut out9, 3, 4, 3, false));
    assert!(e.contains("`w` has 8") && e.contains("n=3, k=4"), "{e}");
    // out is [3, 2], not [2, 2].
    let e = err(g.linear_into(dense, &w, &mut out, 2, 4, 2, false));
    assert!(
        e.contains("`out` has 6") && e.contains("rows=2, n=2"),
        "{e}"
    );
    // Row stride smaller than k.
    let narrow = Strided {
        buf: &x,
        offset: 0,
        row_stride: 3,
    };
    let e = err(g.linear_into(narrow, &w, &mut out, 3, 4, 2, false));
    assert!(e.contains("row stride 3"), "{e}");
    // The view runs past the buffer's end.
    let shifted = Strided {
        buf: &x,
        offset: 1,
        row_stride: 4,
    };
    let e = err(g.linear_into(shifted, &w, &mut out, 3, 4, 2, false));
    assert!(e.contains("`x`") && e.contains("offset 1"), "{e}");
    // Sizes past cuBLASLt's int32 dimensions.
    let huge = (i32::MAX as usize) + 1;
    let e = err(g.linear_into(dense, &w, &mut out, huge, 4, 2, false));
    assert!(e.contains("at most"), "{e}");
}
