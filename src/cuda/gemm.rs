//! GEMMs through cuBLASLt: `x W^T` for the model's projections.
//!
//! cuBLASLt is column-major and our matrices are row-major, so `out [rows, n] = x [rows, k] ·
//! W^T` (W `[n, k]`, HF Linear layout) is computed as its transpose `out^T [n, rows] = W · x^T`:
//! read as column-major, W's buffer is `[k, n]` (lda = k) and is transposed (TRANSA = T), x's
//! buffer is `[k, rows]` with ldb = the row stride of the view (not transposed), and out's buffer is
//! `[n, rows]` with ldc = n.
//!
//! # Compute types
//! This module drives cuBLASLt itself (through `cudarc::cublaslt::result`) rather than through
//! cudarc's `Matmul::matmul`, for three reasons:
//! - cudarc 0.19's `Matmul<f32>` uses `CUBLAS_COMPUTE_32F_FAST_TF32`: f32 operands rounded to
//!   TF32 (10-bit mantissa) in the tensor cores, a relative error near 1e-3 that breaks the f32
//!   parity bar of 1e-5. Here every dtype uses `CUBLAS_COMPUTE_32F` with f32 alpha/beta: for
//!   bf16 and f16 that is exactly what cudarc picks too (bf16/f16 operands, f32 accumulation, the
//!   output rounded to T once); for f32 it is true f32 math (cuBLASLt's `CUBLAS_COMPUTE_32F`
//!   never rounds operands to TF32; only the `_FAST_*` compute types do).
//! - A strided view of x may start at any element, so its address may be aligned to only 2 bytes.
//!   cuBLASLt's heuristic assumes 256-byte aligned operands unless told otherwise, and an algorithm
//!   picked that way may then refuse (or mis-read) the real pointers; here the actual alignment of
//!   every operand goes into the preference (`CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES`).
//! - cudarc's descriptor wrappers panic when a destroy call fails; these ignore such errors (the
//!   handle is still released by cuBLASLt), and every call runs under [`no_panic`].
//!
//! # Algorithm choice (autotuning)
//! cuBLASLt's first heuristic choice is often far from the best at Falcon-H1's shapes (a decode
//! GEMV at a quarter of the memory bandwidth, some prefill GEMMs 10% below the others). So the
//! first call for a shape (its dtype, sizes, leading dimensions, operand alignments and beta: an
//! [`AlgoKey`]) asks the heuristic for up to [`CANDIDATES`] algorithms, times each on the call's
//! own operands on the call's own stream (CUDA events, one warm-up and [`TIMED_RUNS`] timed runs,
//! the L2 cache flushed before each run when the operands would fit in it, as the weights of a
//! real decode step come from HBM), and keeps the fastest, unless it beats the heuristic's first
//! choice by less than 3% (noise). Every candidate uses the same `CUBLAS_COMPUTE_32F`, so they
//! differ only in summation order. The choice is cached per process (a `Mutex`ed map shared by
//! every `Gpu`, sibling streams included) and later calls skip both the heuristic and the timing.
//!
//! Timing must not change the result: without `accumulate` (beta = 0) the candidates write the
//! real output, which the chosen algorithm then overwrites; with `accumulate` (beta = 1) they
//! read the real output as C and write a scratch D of the same shape, so the real output is never
//! written until the chosen algorithm runs once, in place, and the residual is added exactly once.
//!
//! Nothing is tuned while the stream is being captured into a CUDA graph (timing synchronises and
//! allocates, which a capture forbids): the cached choice is used, else the heuristic's first
//! (cached as untuned, so the first call outside a capture tunes it). `FH1_GEMM_TUNE=0` turns
//! tuning off for the process (the heuristic's first choice, as before tuning existed, for
//! bisecting); `FH1_GEMM_TUNE=verbose` prints one line per tuned shape to stderr (every
//! candidate's time and the winner); otherwise nothing is printed. [`Gpu::linear_into_with`]
//! picks the behaviour per call ([`GemmTune`]), for tests and benchmarks.
//!
//! An algorithm that needs a workspace uses the `Gpu`'s own, allocated once at [`MAX_WORKSPACE`]
//! bytes (the workspace inside cudarc's `CudaBlasLT` is not reachable from outside cudarc), so
//! that a GEMM allocates nothing once its shape is cached and can be captured in a CUDA graph
//! (tuning allocates the workspace, when a candidate needs one, and a scratch output or L2 flush
//! buffer that it frees again).

use super::conv1d::Strided;
use super::{cuda_err, no_panic, Gpu, GpuDtype};
use crate::error::{Error, Result};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::cublaslt::MatmulShared;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

/// Element types cuBLASLt multiplies here (f32, bf16, f16; f32 accumulation).
pub trait GemmDtype: GpuDtype {}
impl GemmDtype for f32 {}
impl GemmDtype for half::bf16 {}
impl GemmDtype for half::f16 {}

/// Largest workspace an algorithm may ask for (cuBLASLt's recommendation for Hopper).
const MAX_WORKSPACE: usize = 32 << 20;

/// How many algorithms the heuristic is asked for when a shape is tuned.
pub const CANDIDATES: usize = 8;

/// Timed runs per candidate (after one untimed warm-up); the candidate's time is their median.
pub const TIMED_RUNS: usize = 3;

/// A candidate replaces the heuristic's first choice only when it is faster than this fraction of
/// the first's time (a smaller win is within the timing noise).
const MIN_GAIN: f32 = 0.97;

/// How [`Gpu::linear_into_with`] picks its cuBLASLt algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmTune {
    /// What [`Gpu::linear_into`] does: the shape's tuned algorithm, timed on the first call for
    /// the shape outside a CUDA graph capture; the heuristic's first choice when
    /// `FH1_GEMM_TUNE=0` or while capturing (see the module docs).
    Auto,
    /// cuBLASLt's first heuristic choice, as before tuning existed (ignores a tuned choice;
    /// the heuristic's answer is cached too).
    Heuristic,
    /// Tunes the shape again now, even when it is cached or `FH1_GEMM_TUNE=0`, and caches the
    /// winner; while capturing it behaves as `Auto` (nothing can be timed).
    Retune,
}

/// What `FH1_GEMM_TUNE` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TuneEnv {
    Off,
    Quiet,
    Verbose,
}

/// `FH1_GEMM_TUNE`: `0` / `off` / `false` / `no` turn tuning off, `verbose` prints each tuned
/// shape, anything else (or unset) tunes quietly.
fn parse_tune_env(v: Option<&str>) -> TuneEnv {
    match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("0" | "off" | "false" | "no") => TuneEnv::Off,
        Some("verbose") => TuneEnv::Verbose,
        _ => TuneEnv::Quiet,
    }
}

/// The process's `FH1_GEMM_TUNE`, read once.
fn tune_env() -> TuneEnv {
    static ENV: OnceLock<TuneEnv> = OnceLock::new();
    *ENV.get_or_init(|| parse_tune_env(std::env::var("FH1_GEMM_TUNE").ok().as_deref()))
}

/// The cuBLASLt data type of `T`.
fn data_type<T: GemmDtype>() -> Result<sys::cudaDataType> {
    match T::SUFFIX {
        "f32" => Ok(sys::cudaDataType_t::CUDA_R_32F),
        "bf16" => Ok(sys::cudaDataType_t::CUDA_R_16BF),
        "f16" => Ok(sys::cudaDataType_t::CUDA_R_16F),
        s => Err(Error::invalid(format!(
            "linear: no cuBLASLt data type for element type `{s}`"
        ))),
    }
}

fn lt_err(what: &str, e: lt::CublasError) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// The largest power of two (at most 256) dividing a device address: what cuBLASLt may assume.
fn alignment(addr: u64) -> u32 {
    1u32 << addr.trailing_zeros().min(8)
}

/// Everything the heuristic's choice depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AlgoKey {
    ordinal: usize,
    dtype: &'static str,
    m: u64,
    n: u64,
    k: u64,
    lda: i64,
    ldb: i64,
    ldc: i64,
    align: [u32; 3],
    accumulate: bool,
}

/// An algorithm and the workspace bytes it needs.
#[derive(Clone, Copy, Debug)]
struct Choice {
    algo: sys::cublasLtMatmulAlgo_t,
    ws: usize,
}

/// What is known about a shape: the heuristic's first choice, and the timed winner once tuned.
#[derive(Clone, Copy, Debug)]
struct Entry {
    first: Choice,
    tuned: Option<Choice>,
}

/// The choices per shape, shared by every `Gpu` of the process (an algorithm is plain data,
/// valid for any handle on the same device). The lock is never held while anything is timed.
fn algo_cache() -> &'static Mutex<HashMap<AlgoKey, Entry>> {
    static CACHE: OnceLock<Mutex<HashMap<AlgoKey, Entry>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cache_lock() -> std::sync::MutexGuard<'static, HashMap<AlgoKey, Entry>> {
    // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
    algo_cache().lock().unwrap_or_else(|p| p.into_inner())
}

/// The median of a candidate's timed runs (`None` for a candidate cuBLASLt refused).
fn median(mut v: Vec<f32>) -> Option<f32> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    Some(v[v.len() / 2])
}

/// The winner among the candidates' times (`None`: refused): the fastest, unless the first (the
/// heuristic's own choice) ran and the fastest beats it by less than [`MIN_GAIN`]. `None` when
/// every candidate was refused.
fn pick_winner(times: &[Option<f32>]) -> Option<usize> {
    let best = times
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i, t)))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    match times.first().copied().flatten() {
        Some(t0) if best.1 >= t0 * MIN_GAIN => Some(0),
        _ => Some(best.0),
    }
}

/// A matrix layout descriptor, destroyed on drop (errors ignored: nothing to do about them).
struct Layout(sys::cublasLtMatrixLayout_t);
impl Layout {
    fn new(ty: sys::cudaDataType, rows: u64, cols: u64, ld: i64) -> Result<Self> {
        lt::create_matrix_layout(ty, rows, cols, ld)
            .map(Layout)
            .map_err(|e| lt_err("cuBLASLt matrix layout", e))
    }
}
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout and destroyed only here.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

/// A matmul descriptor, destroyed on drop.
struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc and destroyed only here.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

/// A matmul preference, destroyed on drop.
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref and destroyed only here.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// The descriptors of one GEMM: column-major A = w as `[k, n]` transposed, B = x as `[k, rows]`,
/// C = D = out as `[n, rows]` (see the module docs).
struct Problem {
    desc: Desc,
    a: Layout,
    b: Layout,
    c: Layout,
}

impl Problem {
    fn new(ty: sys::cudaDataType, key: &AlgoKey) -> Result<Problem> {
        let a = Layout::new(ty, key.k, key.m, key.lda)?;
        let b = Layout::new(ty, key.k, key.n, key.ldb)?;
        let c = Layout::new(ty, key.m, key.n, key.ldc)?;
        let desc = Desc(
            lt::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType_t::CUDA_R_32F,
            )
            .map_err(|e| lt_err("cuBLASLt matmul descriptor", e))?,
        );
        // CUBLAS_OP_T.
        let trans_a: i32 = 1;
        // SAFETY: a live descriptor; the attribute is an int32 cublasOperation_t.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc.0,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&trans_a) as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
        }
        .map_err(|e| lt_err("cuBLASLt TRANSA", e))?;
        Ok(Problem { desc, a, b, c })
    }

    /// Up to `count` algorithms for these operands, the heuristic's best first; an error when it
    /// has none. Host-side only (legal during a capture).
    fn heuristics(
        &self,
        handle: sys::cublasLtHandle_t,
        align: [u32; 3],
        count: usize,
    ) -> std::result::Result<Vec<Choice>, lt::CublasError> {
        let pref = Pref(lt::create_matmul_pref()?);
        use sys::cublasLtMatmulPreferenceAttributes_t as A;
        let ws: usize = MAX_WORKSPACE;
        // SAFETY: a live preference; each attribute has the size passed with it (size_t
        // workspace bytes, uint32 alignments).
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                A::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws) as *const usize as *const c_void,
                std::mem::size_of::<usize>(),
            )?;
            for (attr, bytes) in [
                (A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align[0]),
                (A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align[1]),
                (A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align[2]),
                (A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align[2]),
            ] {
                lt::set_matmul_pref_attribute(
                    pref.0,
                    attr,
                    (&bytes) as *const u32 as *const c_void,
                    std::mem::size_of::<u32>(),
                )?;
            }
        }
        let count = count.max(1);
        // SAFETY: a plain C struct of integers and bytes; all zeros is a valid (unused) value,
        // and cuBLASLt overwrites the first `returned` entries.
        let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> =
            vec![unsafe { std::mem::zeroed() }; count];
        let mut returned: std::ffi::c_int = 0;
        // SAFETY: every descriptor is live (D has C's layout); `results` holds `count` entries.
        unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                handle,
                self.desc.0,
                self.a.0,
                self.b.0,
                self.c.0,
                self.c.0,
                pref.0,
                count as std::ffi::c_int,
                results.as_mut_ptr(),
                &mut returned,
            )
        }
        .result()?;
        let v: Vec<Choice> = results
            .iter()
            .take(returned.max(0) as usize)
            .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .map(|r| Choice {
                algo: r.algo,
                ws: r.workspaceSize,
            })
            .collect();
        if v.is_empty() {
            return Err(lt::CublasError(
                sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            ));
        }
        Ok(v)
    }

    /// Enqueues `D = x · w^T + beta C` (column-major: `D = op(A) B + beta C`) with `choice`.
    ///
    /// # Safety
    /// `w`, `x`, `c` and `d` are device addresses of live buffers holding the operands this
    /// problem's layouts describe (with at least the alignments the choice was picked for), `d`
    /// aliases neither `w` nor `x`, and `c` is read only when `beta != 0`; `ws` holds at least
    /// `choice.ws` bytes (or is 0 when that is 0); everything stays alive until the work is done
    /// (stream order).
    #[allow(clippy::too_many_arguments)]
    unsafe fn enqueue(
        &self,
        handle: sys::cublasLtHandle_t,
        choice: &Choice,
        [w, x, c, d]: [u64; 4],
        beta: f32,
        ws: u64,
        stream: sys::cudaStream_t,
    ) -> std::result::Result<(), lt::CublasError> {
        let alpha = 1f32;
        let (wsp, ws_bytes) = if choice.ws > 0 {
            (ws, choice.ws)
        } else {
            (0, 0)
        };
        lt::matmul(
            handle,
            self.desc.0,
            (&alpha) as *const f32 as *const c_void,
            (&beta) as *const f32 as *const c_void,
            w as usize as *const c_void,
            self.a.0,
            x as usize as *const c_void,
            self.b.0,
            c as usize as *const c_void,
            self.c.0,
            d as usize as *mut c_void,
            self.c.0,
            &choice.algo,
            wsp as usize as *mut c_void,
            ws_bytes,
            stream,
        )
    }
}

/// An algorithm's id, tile id and split-K count, for the verbose report.
fn describe(algo: &sys::cublasLtMatmulAlgo_t) -> String {
    use sys::cublasLtMatmulAlgoConfigAttributes_t as C;
    let get = |attr: C| -> Option<i32> {
        let mut v: i32 = 0;
        let mut written = 0usize;
        // SAFETY: reads one 32-bit attribute of an initialised algorithm into `v`.
        let r = unsafe {
            sys::cublasLtMatmulAlgoConfigGetAttribute(
                algo,
                attr,
                (&mut v) as *mut i32 as *mut c_void,
                std::mem::size_of::<i32>(),
                &mut written,
            )
        };
        (r == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(v)
    };
    let s = |v: Option<i32>| v.map_or("?".to_string(), |v| v.to_string());
    format!(
        "id {} tile {} splitk {}",
        s(get(C::CUBLASLT_ALGO_CONFIG_ID)),
        s(get(C::CUBLASLT_ALGO_CONFIG_TILE_ID)),
        s(get(C::CUBLASLT_ALGO_CONFIG_SPLITK_NUM))
    )
}

impl Gpu {
    /// `out [rows, n] = x [rows, k] · w^T` with `w [n, k]` (HF Linear layout, dense), or with
    /// `accumulate` `out += x · w^T` (beta = 1: fuses a residual add). `x` is a strided row view
    /// (`row_stride >= k`, any offset); `out` is dense `[rows, n]`.
    ///
    /// cuBLASLt with `CUBLAS_COMPUTE_32F` for every dtype: f32 accumulation, the result rounded
    /// to `T` once (with `accumulate`, after adding the old `out` in f32); f32 inputs are
    /// multiplied in full f32 (no TF32). Without `accumulate` the old contents of `out` are never
    /// read (they may be NaN). Asynchronous on [`Gpu::stream`], except the first call for a
    /// shape outside a CUDA graph capture, which times cuBLASLt's candidate algorithms on these
    /// operands and waits for them (see the module docs; `out` is still written, or added to,
    /// exactly once).
    ///
    /// Errors (never panics) on a zero or too large size (cuBLASLt's dimensions and leading
    /// dimensions are taken as `i32` here), a buffer of the wrong length or on another device,
    /// or when libcublasLt is missing or finds no algorithm.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_into<T: GemmDtype>(
        &self,
        x: Strided<'_, T>,
        w: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        rows: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.linear_into_with(x, w, out, rows, k, n, accumulate, GemmTune::Auto)
    }

    /// [`Gpu::linear_into`] with the algorithm picked as `tune` says (see [`GemmTune`]); the
    /// result is the same up to summation order.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_into_with<T: GemmDtype>(
        &self,
        x: Strided<'_, T>,
        w: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        rows: usize,
        k: usize,
        n: usize,
        accumulate: bool,
        tune: GemmTune,
    ) -> Result<()> {
        const OP: &str = "linear";
        if rows == 0 || k == 0 || n == 0 {
            return Err(Error::invalid(format!(
                "{OP}: empty GEMM x [rows={rows}, k={k}] · w [n={n}, k={k}]^T"
            )));
        }
        let max = i32::MAX as usize;
        if rows > max || k > max || n > max || x.row_stride > max {
            return Err(Error::invalid(format!(
                "{OP}: x [rows={rows}, k={k}] (row stride {}) · w [n={n}, k={k}]^T: every size \
                 and the row stride must be at most {max} (cuBLASLt int32 dimensions)",
                x.row_stride
            )));
        }
        self.check_strided(OP, "x", &x, rows, k)?;
        self.check_buf(OP, "w", w, &[("n", n), ("k", k)])?;
        self.check_buf(OP, "out", out, &[("rows", rows), ("n", n)])?;
        let shape = format!("x [{rows}, {k}] · w [{n}, {k}]^T ({})", T::SUFFIX);
        let what = format!("{OP}: cuBLASLt on {shape}");
        let err = match no_panic(&what, || {
            self.lt_gemm(x, w, out, rows, k, n, accumulate, tune)
        })? {
            Attempt::Done => return Ok(()),
            Attempt::NoAlgorithm(e) => e,
        };
        let es = std::mem::size_of::<T>();
        if x.offset * es % 256 == 0 && x.row_stride == k {
            return Err(lt_err(
                &format!("{OP}: cuBLASLt found no algorithm for {shape}"),
                err,
            ));
        }
        // No algorithm for this view (its start or its rows misaligned): multiply a dense copy
        // in a fresh (aligned) buffer instead.
        // SAFETY: uninitialised memory of the checked size [rows, k]; copy_into writes all of it
        // before the GEMM (later on the same stream) reads it.
        let mut dense = unsafe { self.stream.alloc::<T>(rows * k) }.map_err(|e| {
            cuda_err(
                &format!("{OP}: allocating a dense copy of x [{rows}, {k}]"),
                e,
            )
        })?;
        self.copy_into(x, &mut dense, rows, k)?;
        let xd = Strided::dense(&dense, k);
        match no_panic(&what, || {
            self.lt_gemm(xd, w, out, rows, k, n, accumulate, tune)
        })? {
            Attempt::Done => Ok(()),
            Attempt::NoAlgorithm(e) => Err(lt_err(
                &format!(
                    "{OP}: cuBLASLt found no algorithm for {shape}, neither with x at offset {} \
                     and row stride {} ({err:?}) nor for a dense copy of x",
                    x.offset, x.row_stride
                ),
                e,
            )),
        }
    }

    /// Whether this `Gpu`'s stream is being captured into a CUDA graph (an invalidated capture
    /// counts, and so does a failed query: nothing may be timed then).
    fn capturing(&self) -> bool {
        use cudarc::driver::sys::CUstreamCaptureStatus as S;
        !matches!(
            self.stream.capture_status(),
            Ok(S::CU_STREAM_CAPTURE_STATUS_NONE)
        )
    }

    /// One cuBLASLt GEMM on checked arguments (see [`Gpu::linear_into_with`]); `NoAlgorithm` when
    /// the heuristic has nothing for these operands (or every candidate was refused).
    #[allow(clippy::too_many_arguments)]
    fn lt_gemm<T: GemmDtype>(
        &self,
        x: Strided<'_, T>,
        w: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        rows: usize,
        k: usize,
        n: usize,
        accumulate: bool,
        tune: GemmTune,
    ) -> Result<Attempt> {
        const OP: &str = "linear";
        let ty = data_type::<T>()?;
        let blas = self.blas_lt()?;
        let handle = *blas.handle();
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the CUDA context", e))?;
        let s = &self.stream;
        let cu_stream = s.cu_stream() as sys::cudaStream_t;
        let xv = x.buf.slice(x.offset..);
        // The guards record the buffers' use on this stream; they live until after the GEMM is
        // enqueued.
        let (xp, _gx) = xv.device_ptr(s);
        let (wp, _gw) = w.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let key = AlgoKey {
            ordinal: self.ordinal(),
            dtype: T::SUFFIX,
            m: n as u64,
            n: rows as u64,
            k: k as u64,
            lda: k as i64,
            ldb: x.row_stride as i64,
            ldc: n as i64,
            align: [alignment(wp), alignment(xp), alignment(op)],
            accumulate,
        };
        let prob = Problem::new(ty, &key)?;

        // Tune only where timing is possible (not while capturing) and asked for. The cache lock
        // is released before anything is timed; two threads tuning one key at once both time
        // it and the later insert wins (either choice is valid).
        let entry = cache_lock().get(&key).copied();
        let tuning = !self.capturing()
            && match tune {
                GemmTune::Heuristic => false,
                GemmTune::Auto => {
                    tune_env() != TuneEnv::Off
                        && !matches!(entry, Some(Entry { tuned: Some(_), .. }))
                }
                GemmTune::Retune => true,
            };
        let (candidates, fixed) = if tuning {
            match prob.heuristics(handle, key.align, CANDIDATES) {
                Ok(v) => (v, None),
                Err(e) => return Ok(Attempt::NoAlgorithm(e)),
            }
        } else {
            let e = match entry {
                Some(e) => e,
                None => {
                    let first = match prob.heuristics(handle, key.align, 1) {
                        Ok(v) => v[0],
                        Err(e) => return Ok(Attempt::NoAlgorithm(e)),
                    };
                    // Keep a tuned entry another thread may have inserted meanwhile.
                    *cache_lock()
                        .entry(key)
                        .or_insert(Entry { first, tuned: None })
                }
            };
            let c = match tune {
                GemmTune::Heuristic => e.first,
                _ => e.tuned.unwrap_or(e.first),
            };
            (Vec::new(), Some(c))
        };

        // One workspace per Gpu, made at the largest size any algorithm here may ask for; the
        // lock is held until every GEMM is enqueued (calls on one stream run in order anyway).
        let need_ws = fixed.iter().chain(&candidates).any(|c| c.ws > 0);
        let mut ws_lock = self.lt_workspace.lock().unwrap_or_else(|p| p.into_inner());
        if need_ws && ws_lock.is_none() {
            // SAFETY: scratch memory cuBLASLt writes before it reads.
            let buf = unsafe { s.alloc::<u8>(MAX_WORKSPACE) }
                .map_err(|e| cuda_err(&format!("{OP}: allocating the cuBLASLt workspace"), e))?;
            *ws_lock = Some(buf);
        }
        let (wsp, _gws) = match ws_lock.as_mut() {
            Some(b) if need_ws => {
                let (p, g) = b.device_ptr_mut(s);
                (p, Some(g))
            }
            _ => (0, None),
        };
        let beta = if accumulate { 1f32 } else { 0f32 };

        let choice = match fixed {
            Some(c) => c,
            None => {
                let tuned = self.tune::<T>(
                    &prob,
                    handle,
                    &candidates,
                    [wp, xp, op],
                    beta,
                    wsp,
                    (rows, k, n, x.row_stride),
                )?;
                let Some(c) = tuned else {
                    return Ok(Attempt::NoAlgorithm(lt::CublasError(
                        sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
                    )));
                };
                cache_lock().insert(
                    key,
                    Entry {
                        first: candidates[0],
                        tuned: Some(c),
                    },
                );
                c
            }
        };

        // The one GEMM on the real output: C = D = out, in place.
        // SAFETY: A reads n*k elements of w (checked: w is exactly [n, k]); B reads columns
        // 0..rows of ldb = row_stride, k elements each, from x's view start (checked by
        // check_strided: offset + (rows-1)*row_stride + k <= len); C (read only when beta = 1)
        // and D are out, exactly [rows, n] with ldc = n (checked). `out` is a `&mut` borrow, so
        // it aliases neither x nor w. The workspace holds MAX_WORKSPACE >= the bytes the
        // algorithm asked for, the alignments given to the heuristic are the pointers' real
        // ones, and every guard lives until the call has been enqueued on this Gpu's stream.
        let r = unsafe { prob.enqueue(handle, &choice, [wp, xp, op, op], beta, wsp, cu_stream) };
        match r {
            Ok(()) => {}
            // Refused before anything was enqueued (e.g. the cached algorithm does not take these
            // operands after all): forget the choice and let the caller fall back.
            Err(e) if e.0 == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => {
                cache_lock().remove(&key);
                return Ok(Attempt::NoAlgorithm(e));
            }
            Err(e) => {
                return Err(lt_err(
                    &format!("{OP}: cuBLASLt matmul on x [{rows}, {k}] · w [{n}, {k}]^T"),
                    e,
                ))
            }
        }
        Ok(Attempt::Done)
    }

    /// Times every candidate on the call's operands on this `Gpu`'s stream and returns the
    /// winner (see [`pick_winner`]); `None` when cuBLASLt refused them all. Never called while
    /// the stream is captured. Waits for the stream.
    ///
    /// The real output is never changed in a way the final GEMM would see: with `beta = 0` the
    /// candidates write it (the final GEMM overwrites all of it without reading it); with
    /// `beta = 1` they read it as C and write a scratch D, so the residual in `out` is untouched
    /// until the final GEMM adds to it once. When the scratch cannot be allocated nothing is
    /// timed and the heuristic's first choice wins (cached as tuned: not retried per call).
    #[allow(clippy::too_many_arguments)]
    fn tune<T: GemmDtype>(
        &self,
        prob: &Problem,
        handle: sys::cublasLtHandle_t,
        candidates: &[Choice],
        [wp, xp, op]: [u64; 3],
        beta: f32,
        wsp: u64,
        (rows, k, n, row_stride): (usize, usize, usize, usize),
    ) -> Result<Option<Choice>> {
        use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
        let s = &self.stream;
        let cu_stream = s.cu_stream() as sys::cudaStream_t;
        let verbose = tune_env() == TuneEnv::Verbose;
        let es = std::mem::size_of::<T>();
        let accumulate = beta != 0.0;
        let shape = format!(
            "{} x [{rows}, {k}] · w [{n}, {k}]^T{}",
            T::SUFFIX,
            if accumulate { " + out" } else { "" }
        );

        // beta = 1: a scratch D (C stays the real output, read only).
        let mut scratch = None;
        if accumulate {
            // SAFETY: written by each candidate before anything reads it; never read here.
            match unsafe { s.alloc::<T>(rows * n) } {
                Ok(b) => scratch = Some(b),
                Err(e) => {
                    if verbose {
                        eprintln!(
                            "gemm tune {shape}: no scratch output ({e:?}); heuristic's first kept"
                        );
                    }
                    return Ok(Some(candidates[0]));
                }
            }
        }
        let dp = match scratch.as_mut() {
            Some(b) => b.device_ptr_mut(s).0,
            None => op,
        };

        // Operands that fit in L2 would stay there from run to run, unlike in a real step (a
        // decode step streams every layer's weights from HBM): flush it before each run by
        // writing a buffer twice its size. Without the buffer (no memory) runs stay warm.
        let l2 = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .unwrap_or(0)
            .max(0) as usize;
        let operand_bytes = (n * k + rows * row_stride + rows * n * (1 + accumulate as usize)) * es;
        let mut flush = None;
        if l2 > 0 && operand_bytes < 2 * l2 {
            // SAFETY: only ever written (memset), never read.
            flush = unsafe { s.alloc::<u8>(2 * l2) }.ok();
        }

        let event = || {
            self.ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| cuda_err("gemm tuning: creating an event", e))
        };
        // Per candidate: the (start, end) events of its timed runs; empty when refused.
        let mut runs: Vec<Vec<_>> = Vec::with_capacity(candidates.len());
        for c in candidates {
            let mut timed = Vec::with_capacity(TIMED_RUNS);
            for run in 0..=TIMED_RUNS {
                if let Some(f) = flush.as_mut() {
                    s.memset_zeros(f)
                        .map_err(|e| cuda_err("gemm tuning: flushing L2", e))?;
                }
                let ev = if run > 0 {
                    let (a, b) = (event()?, event()?);
                    a.record(s)
                        .map_err(|e| cuda_err("gemm tuning: recording an event", e))?;
                    Some((a, b))
                } else {
                    None
                };
                // SAFETY: as for the final GEMM in lt_gemm (same operands, the workspace holds
                // MAX_WORKSPACE bytes); D is the real output only with beta = 0 (never read
                // then), else the scratch [rows, n] of the same layout (256-byte aligned, at
                // least the alignment the candidates were picked for), and C = out is only read.
                let r = unsafe { prob.enqueue(handle, c, [wp, xp, op, dp], beta, wsp, cu_stream) };
                match r {
                    Ok(()) => {}
                    Err(e) if e.0 == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => {
                        // Refused before anything was enqueued: not a candidate after all.
                        timed.clear();
                        break;
                    }
                    Err(e) => {
                        return Err(lt_err(
                            &format!("gemm tuning: cuBLASLt matmul on {shape}"),
                            e,
                        ))
                    }
                }
                if let Some((a, b)) = ev {
                    b.record(s)
                        .map_err(|e| cuda_err("gemm tuning: recording an event", e))?;
                    timed.push((a, b));
                }
            }
            runs.push(timed);
        }
        // Waits for the runs (each end event).
        let mut times = Vec::with_capacity(runs.len());
        for timed in &runs {
            let mut ms = Vec::with_capacity(timed.len());
            for (a, b) in timed {
                ms.push(
                    a.elapsed_ms(b)
                        .map_err(|e| cuda_err("gemm tuning: timing a candidate", e))?,
                );
            }
            times.push(median(ms));
        }
        // The scratch and flush buffers are freed in stream order after the runs.
        let flushed = flush.is_some();
        drop(scratch);
        drop(flush);
        let winner = pick_winner(&times);
        if verbose {
            let list: Vec<String> = candidates
                .iter()
                .zip(&times)
                .enumerate()
                .map(|(i, (c, t))| {
                    let t = t.map_or("refused".to_string(), |t| format!("{:.1} us", t * 1e3));
                    format!("#{i} [{}, ws {}] {t}", describe(&c.algo), c.ws)
                })
                .collect();
            let gain = match (winner, times.first().copied().flatten()) {
                (Some(i), Some(t0)) => times[i].map_or(String::new(), |t| {
                    format!(" ({:.2}x the heuristic's first)", t0 / t)
                }),
                _ => String::new(),
            };
            eprintln!(
                "gemm tune {shape} on device {} ({} candidates{}): {}; winner {}{gain}",
                self.ordinal(),
                candidates.len(),
                if flushed { ", L2 flushed" } else { "" },
                list.join(", "),
                winner.map_or("none".to_string(), |i| format!("#{i}")),
            );
        }
        Ok(winner.map(|i| candidates[i]))
    }
}

/// What one cuBLASLt attempt came to.
enum Attempt {
    Done,
    NoAlgorithm(lt::CublasError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_of_addresses() {
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0102), 2);
        assert_eq!(alignment(0x7f00_0000_0110), 16);
        assert_eq!(alignment(0x7f00_0000_0004), 4);
    }

    #[test]
    fn tune_env_values() {
        assert_eq!(parse_tune_env(None), TuneEnv::Quiet);
        assert_eq!(parse_tune_env(Some("1")), TuneEnv::Quiet);
        assert_eq!(parse_tune_env(Some("")), TuneEnv::Quiet);
        for off in ["0", "off", "OFF", " false ", "no"] {
            assert_eq!(parse_tune_env(Some(off)), TuneEnv::Off, "{off:?}");
        }
        assert_eq!(parse_tune_env(Some("verbose")), TuneEnv::Verbose);
        assert_eq!(parse_tune_env(Some("Verbose")), TuneEnv::Verbose);
    }

    #[test]
    fn median_of_runs() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![5.0, 1.0, 2.0]), Some(2.0));
    }

    #[test]
    fn winner_is_the_fastest_by_a_margin() {
        // Every candidate refused.
        assert_eq!(pick_winner(&[]), None);
        assert_eq!(pick_winner(&[None, None]), None);
        // Clearly faster than the heuristic's first.
        assert_eq!(pick_winner(&[Some(10.0), Some(4.0), Some(6.0)]), Some(1));
        // Within the noise margin: the first stays.
        assert_eq!(pick_winner(&[Some(10.0), Some(9.8)]), Some(0));
        assert_eq!(pick_winner(&[Some(10.0), Some(12.0)]), Some(0));
        // The first refused: the fastest of the rest.
        assert_eq!(pick_winner(&[None, Some(7.0), Some(5.0)]), Some(2));
    }

    #[test]
    fn every_gemm_dtype_has_a_cublaslt_type() {
        assert!(data_type::<f32>().is_ok());
        assert!(data_type::<half::bf16>().is_ok());
        assert!(data_type::<half::f16>().is_ok());
    }
}
