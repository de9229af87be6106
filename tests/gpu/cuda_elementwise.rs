//! The elementwise kernels (kernels/elementwise.cu: embedding, add, swiglu, gather_rows, copy)
//! against the CPU on awkward sizes in f32, bf16 and f16: widths that are and are not multiples
//! of the 16-byte pack, and strided views at odd offsets (where the vector path must fall back)
//! as well as 16-byte aligned ones. Built only with `--features cuda` and meant for a GPU
//! machine: where there is no GPU or driver every test here fails, saying so. Outputs are
//! poisoned with NaN before each launch, so an element a kernel skips is caught.

use crate::common;

use common::gpu_check::{compare, gpu, to_f32, to_t};

use falcon_h1_kernels::cpu;
use falcon_h1_kernels::cuda::conv1d::Strided;
use falcon_h1_kernels::cuda::{CudaSlice, Gpu, GpuDtype};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: [usize; 3] = [1, 3, 129];
/// 1 and 7 and 1001 are scalar-only; 8, 64, 1000 and 3072 take 16-byte packs (for f32 too) when
/// the view allows it.
const COLS: [usize; 7] = [1, 7, 8, 64, 1000, 1001, 3072];

/// Where a `[rows, cols]` matrix sits in its buffer: element (r, c) at `offset + r * (cols + pad)
/// + c`.
#[derive(Clone, Copy, Debug)]
struct Place {
    offset: usize,
    pad: usize,
}

/// Dense; an odd offset and odd padding (never 16-byte aligned: scalar path); 16-byte aligned
/// offset and padding (vector path whenever the width allows).
const PLACES: [Place; 3] = [
    Place { offset: 0, pad: 0 },
    Place { offset: 3, pad: 5 },
    Place { offset: 8, pad: 16 },
];

/// Draws values, rounded to `T` so that the CPU reference sees exactly what the kernel sees.
fn draw<T: GpuDtype>(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| T::from_f32(rng.random_range(-scale..scale)).to_f32())
        .collect()
}

/// A `[rows, cols]` matrix placed in a larger buffer (filled around it with other values):
/// returns the buffer and the matrix, dense.
fn placed<T: GpuDtype>(
    rng: &mut StdRng,
    rows: usize,
    cols: usize,
    at: Place,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let stride = cols + at.pad;
    let buf = draw::<T>(rng, at.offset + rows * stride, scale);
    let m = (0..rows)
        .flat_map(|r| {
            let s = at.offset + r * stride;
            buf[s..s + cols].iter().copied()
        })
        .collect();
    (buf, m)
}

fn view<T>(buf: &CudaSlice<T>, cols: usize, at: Place) -> Strided<'_, T> {
    Strided {
        buf,
        offset: at.offset,
        row_stride: cols + at.pad,
    }
}

fn round<T: GpuDtype>(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| T::from_f32(x).to_f32()).collect()
}

fn nan_buf<T: GpuDtype>(g: &Gpu, n: usize) -> CudaSlice<T> {
    g.upload(&vec![T::from_f32(f32::NAN); n]).unwrap()
}

fn download<T: GpuDtype>(g: &Gpu, b: &CudaSlice<T>) -> Vec<f32> {
    g.synchronize().unwrap();
    to_f32(&g.download(b).unwrap())
}

/// Exact equality (copies and gathers move bits), with the first difference in the message.
fn assert_same(what: &str, got: &[f32], want: &[f32], cols: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got
        .iter()
        .zip(want)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        panic!(
            "{what}: first difference at [{}, {}]: got {}, want {}",
            i / cols,
            i % cols,
            got[i],
            want[i]
        );
    }
}

fn embedding_sweep<T: GpuDtype>() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(1);
    let vocab = 37;
    for &rows in &ROWS {
        for &dim in &COLS {
            let table = draw::<T>(&mut rng, vocab * dim, 2.0);
            let ids: Vec<u32> = (0..rows)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            let want = cpu::embedding(&ids, &table, dim, 1.0).unwrap();
            let dt = g.upload(&to_t::<T>(&table)).unwrap();
            let di = g
                .upload(&ids.iter().map(|&i| i as i32).collect::<Vec<i32>>())
                .unwrap();
            let mut out = nan_buf::<T>(&g, rows * dim);
            g.embedding_into(&dt, &di, &mut out, vocab, dim).unwrap();
            let what = format!("embedding_{} T={rows} dim={dim}", T::SUFFIX);
            assert_same(&what, &download(&g, &out), &want, dim);
        }
    }
}

#[test]
fn embedding_matches_cpu() {
    embedding_sweep::<f32>();
    embedding_sweep::<half::bf16>();
    embedding_sweep::<half::f16>();
}

/// Ids outside [0, vocab) write rows of zeros (and touch nothing else).
#[test]
fn embedding_out_of_range_ids_write_zeros() {
    let g = gpu();
    let (vocab, dim) = (5, 16);
    let table: Vec<f32> = (0..vocab * dim).map(|i| i as f32 + 1.0).collect();
    let ids = [4i32, -1, 5, 0, i32::MAX, i32::MIN];
    let dt = g.upload(&to_t::<half::bf16>(&table)).unwrap();
    let di = g.upload(&ids).unwrap();
    let mut out = nan_buf::<half::bf16>(&g, ids.len() * dim);
    g.embedding_into(&dt, &di, &mut out, vocab, dim).unwrap();
    let got = download(&g, &out);
    for (r, &id) in ids.iter().enumerate() {
        let row = &got[r * dim..(r + 1) * dim];
        if (0..vocab as i32).contains(&id) {
            let s = id as usize * dim;
            assert_eq!(row, &table[s..s + dim], "row {r} (id {id})");
        } else {
            assert!(row.iter().all(|&v| v == 0.0), "row {r} (id {id}): {row:?}");
        }
    }
}

fn add_sweep<T: GpuDtype>() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(2);
    for &rows in &ROWS {
        for &cols in &COLS {
            for at in PLACES {
                let x = draw::<T>(&mut rng, rows * cols, 30.0);
                let (ybuf, y) = placed::<T>(&mut rng, rows, cols, at, 30.0);
                // f32 sum of the two T values, rounded once: exactly what the kernel computes.
                let want = round::<T>(&x.iter().zip(&y).map(|(a, b)| a + b).collect::<Vec<_>>());
                let mut dx = g.upload(&to_t::<T>(&x)).unwrap();
                let dy = g.upload(&to_t::<T>(&ybuf)).unwrap();
                g.add_into(&mut dx, view(&dy, cols, at), rows, cols)
                    .unwrap();
                let what = format!("add_{} [{rows}, {cols}], y {at:?}", T::SUFFIX);
                assert_same(&what, &download(&g, &dx), &want, cols);
            }
        }
    }
}

#[test]
fn add_matches_cpu() {
    add_sweep::<f32>();
    add_sweep::<half::bf16>();
    add_sweep::<half::f16>();
}

fn swiglu_sweep<T: GpuDtype>(tol: f64) {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(3);
    for &rows in &ROWS {
        for &cols in &COLS {
            for (gi, ui) in [(0, 0), (1, 2), (2, 1), (2, 2)] {
                let (gat, uat) = (PLACES[gi], PLACES[ui]);
                let (gbuf, gate) = placed::<T>(&mut rng, rows, cols, gat, 8.0);
                let (ubuf, up) = placed::<T>(&mut rng, rows, cols, uat, 4.0);
                let want = round::<T>(&cpu::swiglu(&gate, &up).unwrap());
                let dg = g.upload(&to_t::<T>(&gbuf)).unwrap();
                let du = g.upload(&to_t::<T>(&ubuf)).unwrap();
                let mut out = nan_buf::<T>(&g, rows * cols);
                g.swiglu_into(
                    view(&dg, cols, gat),
                    view(&du, cols, uat),
                    &mut out,
                    rows,
                    cols,
                )
                .unwrap();
                let what = format!(
                    "swiglu_{} [{rows}, {cols}], gate {gat:?}, up {uat:?}",
                    T::SUFFIX
                );
                compare(&what, &download(&g, &out), &want, cols, tol);
            }
        }
    }
}

// expf on the device and exp on the host may differ in the last f32 bit, which can flip one
// rounding to T: the bar allows that, nothing more.
#[test]
fn swiglu_f32_matches_cpu() {
    swiglu_sweep::<f32>(1e-6);
}

#[test]
fn swiglu_bf16_matches_cpu() {
    swiglu_sweep::<half::bf16>(1e-3);
}

#[test]
fn swiglu_f16_matches_cpu() {
    swiglu_sweep::<half::f16>(1e-3);
}

/// Gate and up as the two column blocks of one fused `[rows, 2 * cols]` projection.
#[test]
fn swiglu_on_fused_projection_blocks() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(4);
    for cols in [1000usize, 1001, 3072] {
        let rows = 17;
        let fused = draw::<half::bf16>(&mut rng, rows * 2 * cols, 6.0);
        let gate: Vec<f32> = (0..rows)
            .flat_map(|r| fused[r * 2 * cols..r * 2 * cols + cols].iter().copied())
            .collect();
        let up: Vec<f32> = (0..rows)
            .flat_map(|r| {
                fused[r * 2 * cols + cols..(r + 1) * 2 * cols]
                    .iter()
                    .copied()
            })
            .collect();
        let want = round::<half::bf16>(&cpu::swiglu(&gate, &up).unwrap());
        let df = g.upload(&to_t::<half::bf16>(&fused)).unwrap();
        let mut out = nan_buf::<half::bf16>(&g, rows * cols);
        let gv = Strided {
            buf: &df,
            offset: 0,
            row_stride: 2 * cols,
        };
        let uv = Strided {
            buf: &df,
            offset: cols,
            row_stride: 2 * cols,
        };
        g.swiglu_into(gv, uv, &mut out, rows, cols).unwrap();
        let what = format!("swiglu_bf16 fused [{rows}, 2 x {cols}]");
        compare(&what, &download(&g, &out), &want, cols, 1e-3);
    }
}

fn gather_sweep<T: GpuDtype>() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(5);
    for &x_rows in &[1usize, 3, 129] {
        for &cols in &COLS {
            for at in PLACES {
                let (xbuf, x) = placed::<T>(&mut rng, x_rows, cols, at, 2.0);
                // Repeats and any order; one more index than rows of x.
                let idx: Vec<i32> = (0..x_rows + 1)
                    .map(|_| rng.random_range(0..x_rows as i32))
                    .collect();
                let want: Vec<f32> = idx
                    .iter()
                    .flat_map(|&i| {
                        x[i as usize * cols..(i as usize + 1) * cols]
                            .iter()
                            .copied()
                    })
                    .collect();
                let dx = g.upload(&to_t::<T>(&xbuf)).unwrap();
                let di = g.upload(&idx).unwrap();
                let mut out = nan_buf::<T>(&g, idx.len() * cols);
                g.gather_rows_into(view(&dx, cols, at), &di, &mut out, cols)
                    .unwrap();
                let what = format!(
                    "gather_rows_{} {} of {x_rows} rows x {cols}, x {at:?}",
                    T::SUFFIX,
                    idx.len()
                );
                assert_same(&what, &download(&g, &out), &want, cols);
            }
        }
    }
}

#[test]
fn gather_rows_matches_cpu() {
    gather_sweep::<f32>();
    gather_sweep::<half::bf16>();
    gather_sweep::<half::f16>();
}

/// Indices outside the rows x holds write zeros; x's rows are counted from its buffer.
#[test]
fn gather_rows_out_of_range_write_zeros() {
    let g = gpu();
    let cols = 8;
    // 3 full rows at offset 2 with row stride 10 (the last row ends at 2 + 2*10 + 8 = 30 = len).
    let buf: Vec<f32> = (0..30).map(|i| i as f32).collect();
    let dx = g.upload(&buf).unwrap();
    let x = Strided {
        buf: &dx,
        offset: 2,
        row_stride: 10,
    };
    let idx = [2i32, 3, -1, 0, 1000];
    let di = g.upload(&idx).unwrap();
    let mut out = nan_buf::<f32>(&g, idx.len() * cols);
    g.gather_rows_into(x, &di, &mut out, cols).unwrap();
    let got = download(&g, &out);
    for (r, &i) in idx.iter().enumerate() {
        let row = &got[r * cols..(r + 1) * cols];
        if (0..3).contains(&i) {
            let s = 2 + i as usize * 10;
            assert_eq!(row, &buf[s..s + cols], "row {r} (index {i})");
        } else {
            assert!(
                row.iter().all(|&v| v == 0.0),
                "row {r} (index {i}): {row:?}"
            );
        }
    }
}

fn copy_sweep<T: GpuDtype>() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(6);
    for &rows in &ROWS {
        for &cols in &COLS {
            for at in PLACES {
                let (xbuf, x) = placed::<T>(&mut rng, rows, cols, at, 2.0);
                let dx = g.upload(&to_t::<T>(&xbuf)).unwrap();
                let mut out = nan_buf::<T>(&g, rows * cols);
                g.copy_into(view(&dx, cols, at), &mut out, rows, cols)
                    .unwrap();
                let what = format!("copy_{} [{rows}, {cols}], x {at:?}", T::SUFFIX);
                assert_same(&what, &download(&g, &out), &x, cols);
            }
        }
    }
}

#[test]
fn copy_matches_cpu() {
    copy_sweep::<f32>();
    copy_sweep::<half::bf16>();
    copy_sweep::<half::f16>();
}

/// More items than the largest grid has threads (65536 blocks of 256): the grid-stride loop
/// must cover the rest, on the scalar path (odd width and offset) and on the vector path.
#[test]
fn copy_and_add_past_one_grid() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(7);
    let (rows, cols) = (4100, 4099);
    let at = Place { offset: 1, pad: 2 };
    let (xbuf, x) = placed::<half::bf16>(&mut rng, rows, cols, at, 2.0);
    let dx = g.upload(&to_t::<half::bf16>(&xbuf)).unwrap();
    let mut out = nan_buf::<half::bf16>(&g, rows * cols);
    g.copy_into(view(&dx, cols, at), &mut out, rows, cols)
        .unwrap();
    assert_same("copy_bf16 past one grid", &download(&g, &out), &x, cols);

    // f32 packs hold 4 elements: [8192, 8200] is 16.8M packs.
    let (rows, cols) = (8192, 8200);
    let a = draw::<f32>(&mut rng, rows * cols, 1.0);
    let b = draw::<f32>(&mut rng, rows * cols, 1.0);
    let want: Vec<f32> = a.iter().zip(&b).map(|(p, q)| p + q).collect();
    let mut da = g.upload(&a).unwrap();
    let db = g.upload(&b).unwrap();
    g.add_into(&mut da, Strided::dense(&db, cols), rows, cols)
        .unwrap();
    assert_same("add_f32 past one grid", &download(&g, &da), &want, cols);
}

#[test]
fn elementwise_rejects_bad_shapes() {
    let g = gpu();
    let err = |r: falcon_h1_kernels::Result<()>| r.unwrap_err().to_string();
    let table = g.upload(&[1f32; 12]).unwrap();
    let ids = g.upload(&[0i32; 3]).unwrap();
    let mut out = g.upload(&[0f32; 12]).unwrap();

    let e = err(g.embedding_into(&table, &ids, &mut out, 4, 3));
    assert!(
        e.contains("`out` has 12") && e.contains("T=3, dim=3"),
        "{e}"
    );
    let e = err(g.embedding_into(&table, &ids, &mut out, 5, 4));
    assert!(e.contains("`table` has 12") && e.contains("vocab=5"), "{e}");
    let e = err(g.embedding_into(&table, &ids, &mut out, 0, 4));
    assert!(e.contains("empty"), "{e}");

    let y = g.upload(&[1f32; 12]).unwrap();
    let e = err(g.add_into(&mut out, Strided::dense(&y, 4), 3, 5));
    assert!(
        e.contains("`x` has 12") && e.contains("rows=3, cols=5"),
        "{e}"
    );
    let y_short = Strided {
        buf: &y,
        offset: 1,
        row_stride: 4,
    };
    let e = err(g.add_into(&mut out, y_short, 3, 4));
    assert!(e.contains("`y`") && e.contains("offset 1"), "{e}");
    let e = err(g.add_into(&mut out, Strided::dense(&y, 4), 0, 4));
    assert!(e.contains("empty"), "{e}");

    let gate = g.upload(&[1f32; 12]).unwrap();
    let up = g.upload(&[1f32; 8]).unwrap();
    let e = err(g.swiglu_into(
        Strided::dense(&gate, 4),
        Strided::dense(&up, 4),
        &mut out,
        3,
        4,
    ));
    assert!(e.contains("`up` has 8"), "{e}");
    let narrow = Strided {
        buf: &gate,
        offset: 0,
        row_stride: 3,
    };
    let e = err(g.swiglu_into(narrow, Strided::dense(&gate, 4), &mut out, 3, 4));
    assert!(e.contains("`gate` row stride 3"), "{e}");
    let mut out8 = g.upload(&[0f32; 8]).unwrap();
    let e = err(g.swiglu_into(
        Strided::dense(&gate, 4),
        Strided::dense(&gate, 4),
        &mut out8,
        3,
        4,
    ));
    assert!(e.contains("`out` has 8"), "{e}");

    // gather: x holds no full row of 13; out of the wrong length; a stride below the width.
    let idx = g.upload(&[0i32; 2]).unwrap();
    let e = err(g.gather_rows_into(Strided::dense(&gate, 13), &idx, &mut out, 13));
    assert!(e.contains("`x` has 12"), "{e}");
    let e = err(g.gather_rows_into(Strided::dense(&gate, 4), &idx, &mut out, 4));
    assert!(
        e.contains("`out` has 12") && e.contains("rows=2, cols=4"),
        "{e}"
    );
    let e = err(g.gather_rows_into(narrow, &idx, &mut out8, 4));
    assert!(e.contains("stride"), "{e}");

    let e = err(g.copy_into(Strided::dense(&gate, 4), &mut out8, 3, 4));
    assert!(
        e.contains("`out` has 8") && e.contains("rows=3, cols=4"),
        "{e}"
    );
    let e = err(g.copy_into(Strided::dense(&gate, 6), &mut out, 3, 4));
    assert!(e.contains("`x` has 12"), "{e}");
    let e = err(g.copy_into(Strided::dense(&gate, 4), &mut out, 3, 0));
    assert!(e.contains("empty"), "{e}");
}

fn argmax_sweep<T: GpuDtype>() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(9);
    // Widths around the block size and the 130k vocab of the releases; strided rows.
    for &(rows, cols, stride) in &[
        (1, 1, 1),
        (3, 1023, 1030),
        (5, 1025, 1025),
        (32, 130_049, 130_049),
    ] {
        let mut host: Vec<f32> = (0..rows * stride)
            .map(|_| rng.random_range(-4.0..4.0))
            .collect();
        // Row 0: a tie of the maximum at two places (the first wins). Row 1: NaNs never win.
        host[cols / 2] = 100.0;
        host[cols - 1] = 100.0;
        if rows > 1 {
            host[stride] = f32::NAN;
            host[stride + cols / 3] = 50.0;
        }
        let rounded = round::<T>(&host);
        let dx = g.upload(&to_t::<T>(&rounded)).unwrap();
        let x = Strided {
            buf: &dx,
            offset: 0,
            row_stride: stride,
        };
        // Poisoned: every entry must be written.
        let mut out = g.upload(&vec![-7i32; rows]).unwrap();
        g.argmax_rows_into(x, &mut out, rows, cols).unwrap();
        let got = g.download(&out).unwrap();
        for r in 0..rows {
            let want = falcon_h1_kernels::model::argmax(&rounded[r * stride..r * stride + cols]);
            assert_eq!(
                got[r],
                want as i32,
                "{} rows {rows} cols {cols}: row {r}",
                T::SUFFIX
            );
        }
        assert_eq!(got[0], (cols / 2) as i32, "the first of tied maxima");
    }
    // A row of NaN gives 0; bad shapes are errors.
    let dx = g.upload(&to_t::<T>(&[f32::NAN; 4])).unwrap();
    let mut out = g.upload(&[5i32]).unwrap();
    let x = || Strided {
        buf: &dx,
        offset: 0,
        row_stride: 4,
    };
    g.argmax_rows_into(x(), &mut out, 1, 4).unwrap();
    assert_eq!(g.download(&out).unwrap(), vec![0]);
    assert!(
        g.argmax_rows_into(x(), &mut out, 2, 4).is_err(),
        "x too short"
    );
    assert!(g.argmax_rows_into(x(), &mut out, 1, 0).is_err(), "empty");
}

#[test]
fn argmax_rows_matches_host_argmax() {
    argmax_sweep::<f32>();
    argmax_sweep::<half::bf16>();
    argmax_sweep::<half::f16>();
}
