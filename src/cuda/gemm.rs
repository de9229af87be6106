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
//! The algorithm cuBLASLt's heuristic picks for a shape (with its dtype, leading dimensions,
//! alignments and beta) is cached per process, so repeated calls (decode) skip the heuristic.
//! An algorithm that needs a workspace uses the `Gpu`'s own, allocated once at [`MAX_WORKSPACE`]
//! bytes (the workspace inside cudarc's `CudaBlasLT` is not reachable from outside cudarc), so
//! that a GEMM allocates nothing and can be captured in a CUDA graph.

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

/// Algorithm and workspace bytes per shape, shared by every `Gpu` of the process (an algorithm
/// is plain data, valid for any handle on the same device).
fn algo_cache() -> &'static Mutex<HashMap<AlgoKey, (sys::cublasLtMatmulAlgo_t, usize)>> {
    static CACHE: OnceLock<Mutex<HashMap<AlgoKey, (sys::cublasLtMatmulAlgo_t, usize)>>> =
        OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
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

impl Gpu {
    /// `out [rows, n] = x [rows, k] · w^T` with `w [n, k]` (HF Linear layout, dense), or with
    /// `accumulate` `out += x · w^T` (beta = 1: fuses a residual add). `x` is a strided row view
    /// (`row_stride >= k`, any offset); `out` is dense `[rows, n]`.
    ///
    /// cuBLASLt with `CUBLAS_COMPUTE_32F` for every dtype: f32 accumulation, the result rounded
    /// to `T` once (with `accumulate`, after adding the old `out` in f32); f32 inputs are
    /// multiplied in full f32 (no TF32). Without `accumulate` the old contents of `out` are never
    /// read (they may be NaN). Asynchronous on [`Gpu::stream`].
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
        let err = match no_panic(&what, || self.lt_gemm(x, w, out, rows, k, n, accumulate))? {
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
        match no_panic(&what, || self.lt_gemm(xd, w, out, rows, k, n, accumulate))? {
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

    /// One cuBLASLt GEMM on checked arguments (see [`Gpu::linear_into`]); `NoAlgorithm` when the
    /// heuristic has nothing for these operands.
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
    ) -> Result<Attempt> {
        const OP: &str = "linear";
        let ty = data_type::<T>()?;
        let blas = self.blas_lt()?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the CUDA context", e))?;
        let s = &self.stream;
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
        // Column-major views (see the module docs): A = w as [k, n] transposed, B = x as
        // [k, rows], C = D = out as [n, rows].
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

        let cached = algo_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        let (algo, ws_bytes) = match cached {
            Some(v) => v,
            None => {
                let pref = Pref(
                    lt::create_matmul_pref()
                        .map_err(|e| lt_err("cuBLASLt matmul preference", e))?,
                );
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
                    )
                    .map_err(|e| lt_err("cuBLASLt workspace preference", e))?;
                    for (attr, bytes) in [
                        (A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align[0]),
                        (A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align[1]),
                        (A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align[2]),
                        (A::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align[2]),
                    ] {
                        lt::set_matmul_pref_attribute(
                            pref.0,
                            attr,
                            (&bytes) as *const u32 as *const c_void,
                            std::mem::size_of::<u32>(),
                        )
                        .map_err(|e| lt_err("cuBLASLt alignment preference", e))?;
                    }
                }
                // SAFETY: every descriptor is live; D has C's layout (in place).
                let h = unsafe {
                    lt::get_matmul_algo_heuristic(
                        *blas.handle(),
                        desc.0,
                        a.0,
                        b.0,
                        c.0,
                        c.0,
                        pref.0,
                    )
                };
                let h = match h {
                    Ok(h) => h,
                    Err(e) => return Ok(Attempt::NoAlgorithm(e)),
                };
                let v = (h.algo, h.workspaceSize);
                algo_cache()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, v);
                v
            }
        };
        // One workspace per Gpu, made at the largest size any algorithm here may ask for; the
        // lock is held until the GEMM is enqueued (calls on one stream run in order anyway).
        let mut ws_lock = self.lt_workspace.lock().unwrap_or_else(|p| p.into_inner());
        if ws_bytes > 0 && ws_lock.is_none() {
            // SAFETY: scratch memory cuBLASLt writes before it reads.
            let buf = unsafe { s.alloc::<u8>(MAX_WORKSPACE) }
                .map_err(|e| cuda_err(&format!("{OP}: allocating the cuBLASLt workspace"), e))?;
            *ws_lock = Some(buf);
        }
        let (wsp, _gws) = match ws_lock.as_mut() {
            Some(b) if ws_bytes > 0 => {
                let (p, g) = b.device_ptr_mut(s);
                (p, Some(g))
            }
            _ => (0, None),
        };
        let alpha = 1f32;
        let beta = if accumulate { 1f32 } else { 0f32 };
        // SAFETY: A reads n*k elements of w (checked: w is exactly [n, k]); B reads columns
        // 0..rows of ldb = row_stride, k elements each, from x's view start (checked by
        // check_strided: offset + (rows-1)*row_stride + k <= len); C (read only when beta = 1)
        // and D are out, exactly [rows, n] with ldc = n (checked). `out` is a `&mut` borrow, so
        // it aliases neither x nor w. The workspace holds the bytes the algorithm asked for, the
        // alignments given to the heuristic are the pointers' real ones, and every guard lives
        // until the call has been enqueued on this Gpu's stream.
        let r = unsafe {
            lt::matmul(
                *blas.handle(),
                desc.0,
                (&alpha) as *const f32 as *const c_void,
                (&beta) as *const f32 as *const c_void,
                wp as usize as *const c_void,
                a.0,
                xp as usize as *const c_void,
                b.0,
                op as usize as *const c_void,
                c.0,
                op as usize as *mut c_void,
                c.0,
                &algo,
                wsp as usize as *mut c_void,
                ws_bytes,
                s.cu_stream() as sys::cudaStream_t,
            )
        };
        match r {
            Ok(()) => {}
            // Refused before anything was enqueued (e.g. the cached algorithm does not take these
            // operands after all): forget the choice and let the caller fall back.
            Err(e) if e.0 == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => {
                algo_cache()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
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
    fn every_gemm_dtype_has_a_cublaslt_type() {
        assert!(data_type::<f32>().is_ok());
        assert!(data_type::<half::bf16>().is_ok());
        assert!(data_type::<half::f16>().is_ok());
    }
}
