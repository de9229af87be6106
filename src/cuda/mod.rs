//! The CUDA backend's foundation: the embedded fatbin (every kernels/*.cu, built by build.rs),
//! a context with one module loaded once and its functions cached by name, one non-default stream,
//! and safe launchers that validate every input before any `unsafe`.
//!
//! Nothing links against CUDA at build time: cudarc opens libcuda when [`Gpu::new`] runs, and a
//! machine without a driver gets an [`Error::Cuda`], not a panic.

pub mod attention;
pub mod conv1d;
pub mod elementwise;
pub mod gated_norm;
pub mod gemm;
pub mod init;
pub mod params;
pub mod ssd;
pub mod ssm_update;

use crate::error::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

/// Device buffers, re-exported so that callers need no direct cudarc dependency.
pub use cudarc::driver::CudaSlice;
pub use params::RmsNormParams;

/// Every kernel of kernels/*.cu in one fatbin: sm_80, sm_86, sm_89, sm_90a machine code and
/// compute_80 PTX (which the driver JIT-compiles on any newer card).
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));

/// The targets the fatbin must hold; [`fatbin_targets`] of [`FATBIN`] lists exactly these.
pub const FATBIN_TARGETS: [&str; 5] = ["compute_80", "sm_80", "sm_86", "sm_89", "sm_90a"];

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// Runs a cudarc call that may panic instead of returning an error (its dynamic loader panics
/// when libcuda lacks a symbol, e.g. a driver older than CUDA 13.0) and turns the panic into
/// [`Error::Cuda`].
fn no_panic<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        Err(Error::Cuda(format!("{what}: {msg}")))
    })
}

/// The images in a CUDA fatbin, sorted: `sm_XX` (or `sm_XXa`) for machine code, `compute_XX` for
/// PTX. Reads the container headers only, so it needs no CUDA toolkit or driver.
///
/// Layout (as nvcc 13 writes it): a 16-byte header (magic `0xBA55ED50`, u16 version, u16 header
/// size, u64 body size), then entries of u16 kind (1 PTX, 2 ELF), u16 version, u32 header size,
/// u64 payload size, ..., u32 SM number at byte 28 and u64 flags at byte 40, where bit 20 marks an
/// arch-specific target (sm_90a).
pub fn fatbin_targets(bytes: &[u8]) -> Result<Vec<String>> {
    let bad = |why: &str| Error::Cuda(format!("fatbin: {why}"));
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if u32_at(0) != Some(0xBA55_ED50) {
        return Err(bad("wrong magic number"));
    }
    let header = u16_at(6).ok_or_else(|| bad("truncated header"))? as usize;
    let body = u64_at(8).ok_or_else(|| bad("truncated header"))? as usize;
    let end = header
        .checked_add(body)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("body runs past the end"))?;
    let mut targets = Vec::new();
    let mut off = header;
    while off < end {
        let trunc = || bad(&format!("entry at byte {off} is truncated"));
        let kind = u16_at(off).ok_or_else(trunc)?;
        let entry_header = u32_at(off + 4).ok_or_else(trunc)? as usize;
        let payload = u64_at(off + 8).ok_or_else(trunc)? as usize;
        let sm = u32_at(off + 28).ok_or_else(trunc)?;
        let flags = u64_at(off + 40).ok_or_else(trunc)?;
        let suffix = if flags & (1 << 20) != 0 { "a" } else { "" };
        targets.push(match kind {
            1 => format!("compute_{sm}{suffix}"),
            2 => format!("sm_{sm}{suffix}"),
            k => return Err(bad(&format!("entry at byte {off} has unknown kind {k}"))),
        });
        if entry_header == 0 {
            return Err(trunc());
        }
        off = off
            .checked_add(entry_header)
            .and_then(|o| o.checked_add(payload))
            .ok_or_else(trunc)?;
    }
    targets.sort();
    Ok(targets)
}

/// An element type the kernels are built for; `SUFFIX` completes a kernel name (`rms_norm_bf16`).
pub trait GpuDtype: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// Kernel name suffix.
    const SUFFIX: &'static str;
    /// From f32 (round to nearest even).
    fn from_f32(v: f32) -> Self;
    /// To f32 (exact).
    fn to_f32(self) -> f32;
}

impl GpuDtype for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl GpuDtype for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl GpuDtype for half::f16 {
    const SUFFIX: &'static str = "f16";
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// The device address of an optional input (0 when absent) and the guard that must outlive the
/// launch that reads it.
pub(crate) fn opt_ptr<'a, T>(
    buf: Option<&'a CudaSlice<T>>,
    s: &'a CudaStream,
) -> (u64, Option<cudarc::driver::SyncOnDrop<'a>>) {
    match buf {
        Some(b) => {
            let (p, g) = b.device_ptr(s);
            (p, Some(g))
        }
        None => (0, None),
    }
}

/// [`opt_ptr`] for an optional output.
pub(crate) fn opt_ptr_mut<'a, T>(
    buf: Option<&'a mut CudaSlice<T>>,
    s: &'a CudaStream,
) -> (u64, Option<cudarc::driver::SyncOnDrop<'a>>) {
    match buf {
        Some(b) => {
            let (p, g) = b.device_ptr_mut(s);
            (p, Some(g))
        }
        None => (0, None),
    }
}

/// One GPU: its context, the kernel module (loaded once), a cache of kernel handles, and the
/// stream every launch goes to (never the legacy default stream).
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// cuBLASLt handle and workspace, made on first use (so that a process that never multiplies
    /// never needs libcublasLt).
    blas_lt: OnceLock<cudarc::cublaslt::CudaBlasLT>,
    /// cuBLASLt workspace, allocated once at the largest size an algorithm may ask for (so that a
    /// captured CUDA graph's GEMMs allocate nothing).
    lt_workspace: Mutex<Option<CudaSlice<u8>>>,
}

impl Gpu {
    /// Opens device `ordinal` and loads the kernels. Errors (never panics) when there is no driver,
    /// a driver too old for CUDA 13.0, no such device, or no fatbin image for this card.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        // SAFETY: only tries to dlopen libcuda and closes it again.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Cuda(
                "no CUDA driver found (libcuda.so could not be loaded); \
                 the `cuda` feature needs an NVIDIA GPU and its driver at run time"
                    .into(),
            ));
        }
        no_panic("opening the CUDA device", || {
            let count = CudaContext::device_count().map_err(|e| cuda_err("counting devices", e))?;
            if ordinal >= count.max(0) as usize {
                return Err(Error::Cuda(format!(
                    "device {ordinal} does not exist: {count} CUDA device(s) found"
                )));
            }
            let ctx = CudaContext::new(ordinal)
                .map_err(|e| cuda_err(&format!("opening device {ordinal}"), e))?;
            // SAFETY: every buffer of this crate is used on this Gpu's one stream, so cudarc's
            // per-buffer events (which would make a captured CUDA graph wait on events recorded
            // outside the capture) are not needed for ordering. Callers that use other streams
            // with these buffers must synchronise themselves (documented on `Gpu::stream`).
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx
                .new_stream()
                .map_err(|e| cuda_err("creating a stream", e))?;
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(FATBIN.to_vec()))
                .map_err(|e| {
                    cuda_err(
                        &format!(
                            "loading the kernels (fatbin targets {}) on this device",
                            FATBIN_TARGETS.join(", ")
                        ),
                        e,
                    )
                })?;
            Ok(Gpu {
                ctx,
                stream,
                module,
                functions: Mutex::new(HashMap::new()),
                blas_lt: OnceLock::new(),
                lt_workspace: Mutex::new(None),
            })
        })
    }

    /// Another `Gpu` on the same device and context, with its own stream (and its own cuBLASLt
    /// workspace), sharing the loaded kernels: for work that runs concurrently with this one's
    /// stream. Buffers carry no cross-stream events (see [`Gpu::stream`]): the caller orders the
    /// two streams with events.
    pub fn sibling(&self) -> Result<Gpu> {
        let stream = self
            .ctx
            .new_stream()
            .map_err(|e| cuda_err("creating a stream", e))?;
        Ok(Gpu {
            ctx: self.ctx.clone(),
            stream,
            module: self.module.clone(),
            functions: Mutex::new(HashMap::new()),
            blas_lt: OnceLock::new(),
            lt_workspace: Mutex::new(None),
        })
    }

    /// Makes this `Gpu`'s stream wait for the work enqueued so far on `other`'s stream (an event
    /// recorded there; legal during a CUDA graph capture, where it forks or joins the capture).
    pub fn wait_for(&self, other: &Gpu) -> Result<()> {
        self.stream
            .join(&other.stream)
            .map_err(|e| cuda_err("ordering two streams", e))
    }

    /// The device's name.
    pub fn name(&self) -> Result<String> {
        self.ctx.name().map_err(|e| cuda_err("device name", e))
    }

    /// Free and total memory of this device, in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))?;
        cudarc::driver::result::mem_get_info().map_err(|e| cuda_err("querying device memory", e))
    }

    /// The most bytes in use at once in the device's default memory pool (where every buffer of
    /// this crate comes from) since the last [`Gpu::reset_peak_memory`]: the peak device memory of
    /// the work in between, weights and caches included.
    pub fn peak_memory(&self) -> Result<u64> {
        use cudarc::driver::sys;
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let mut high: u64 = 0;
        // SAFETY: plain out-parameters of the right types; the device handle comes from the live
        // context.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device())
                .result()
                .map_err(|e| cuda_err("getting the default memory pool", e))?;
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut high as *mut u64 as *mut c_void,
            )
            .result()
            .map_err(|e| cuda_err("reading the pool's peak", e))?;
        }
        Ok(high)
    }

    /// Restarts [`Gpu::peak_memory`] from the memory in use now.
    pub fn reset_peak_memory(&self) -> Result<()> {
        use cudarc::driver::sys;
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let mut zero: u64 = 0;
        // SAFETY: as in peak_memory; the driver only accepts 0 for this attribute.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device())
                .result()
                .map_err(|e| cuda_err("getting the default memory pool", e))?;
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut zero as *mut u64 as *mut c_void,
            )
            .result()
            .map_err(|e| cuda_err("resetting the pool's peak", e))?;
        }
        Ok(())
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// The context, for callers that allocate or launch through cudarc themselves.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launch of this `Gpu` goes to. Buffers made here carry no cross-stream
    /// events: work on another stream that touches them must be ordered by the caller.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The cuBLASLt handle on this `Gpu`'s stream, created on first use. Errors (never panics)
    /// when libcublasLt cannot be loaded.
    pub(crate) fn blas_lt(&self) -> Result<&cudarc::cublaslt::CudaBlasLT> {
        if let Some(h) = self.blas_lt.get() {
            return Ok(h);
        }
        let h = no_panic("creating the cuBLASLt handle", || {
            cudarc::cublaslt::CudaBlasLT::new(self.stream.clone())
                .map_err(|e| cuda_err("creating the cuBLASLt handle", e))
        })?;
        // Another thread may have won the race; either handle is fine.
        Ok(self.blas_lt.get_or_init(|| h))
    }

    /// A kernel by name, loaded from the module once and cached.
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut cache = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let f = self
            .module
            .load_function(name)
            .map_err(|e| cuda_err(&format!("kernel `{name}` is not in the fatbin"), e))?;
        cache.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Copies host values to a new device buffer (on this `Gpu`'s stream).
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .map_err(|e| cuda_err("host to device copy", e))
    }

    /// A zeroed device buffer of `len` elements.
    pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(len)
            .map_err(|e| cuda_err(&format!("allocating {len} elements"), e))
    }

    /// Copies a device buffer to the host (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(dev)
            .map_err(|e| cuda_err("device to host copy", e))
    }

    /// Waits for every launch on the stream; reports a kernel fault as an error.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))
    }

    /// Checks a buffer argument: its length, and that it lives in this `Gpu`'s context.
    fn check_buf<T>(
        &self,
        op: &str,
        name: &str,
        buf: &CudaSlice<T>,
        dims: &[(&str, usize)],
    ) -> Result<()> {
        let want = dims
            .iter()
            .try_fold(1usize, |n, &(_, d)| n.checked_mul(d))
            .ok_or_else(|| Error::invalid(format!("{op}: `{name}` shape {dims:?} overflows")))?;
        if buf.len() != want {
            let shape: Vec<String> = dims.iter().map(|(n, d)| format!("{n}={d}")).collect();
            return Err(Error::invalid(format!(
                "{op}: `{name}` has {} elements, expected [{}] = {want}",
                buf.len(),
                shape.join(", ")
            )));
        }
        if !Arc::ptr_eq(buf.context(), &self.ctx) {
            return Err(Error::invalid(format!(
                "{op}: `{name}` lives on device {} (another context), this Gpu is device {}",
                buf.ordinal(),
                self.ordinal()
            )));
        }
        Ok(())
    }

    /// RMSNorm of each row: `x [rows, cols]`, `weight [cols]`, returns a new `[rows, cols]`
    /// buffer `x * rsqrt(mean(x^2) + eps)` (rounded to `T`) `* weight`, f32 accumulation.
    ///
    /// With `residual [rows, cols]` the residual add is fused: first `residual += x` (rounded to
    /// `T` and written back), and the norm is of that sum. Asynchronous on [`Gpu::stream`].
    pub fn rms_norm<T: GpuDtype>(
        &self,
        x: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        residual: Option<&mut CudaSlice<T>>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<CudaSlice<T>> {
        self.check_rms_norm(x, weight, residual.as_deref(), rows, cols, eps)?;
        // SAFETY: uninitialised device memory of the checked size; the launch below writes every
        // one of its rows*cols elements before anything can read it, and on error it is dropped.
        let mut out = unsafe { self.stream.alloc::<T>(rows * cols) }
            .map_err(|e| cuda_err(&format!("rms_norm: allocating [{rows}, {cols}]"), e))?;
        self.rms_norm_into(x, weight, residual, &mut out, rows, cols, eps)?;
        Ok(out)
    }

    /// [`Gpu::rms_norm`] into an existing `out [rows, cols]` buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_into<T: GpuDtype>(
        &self,
        x: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        residual: Option<&mut CudaSlice<T>>,
        out: &mut CudaSlice<T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        self.check_rms_norm(x, weight, residual.as_deref(), rows, cols, eps)?;
        self.check_buf(OP, "out", out, &[("rows", rows), ("cols", cols)])?;
        let f = self.function(&format!("rms_norm_{}", T::SUFFIX))?;

        // Mirrors the kernel's choice of 16-byte packs (buffers from cudarc are 256-byte aligned),
        // so that each thread gets about one pack per row.
        let pack = 16 / std::mem::size_of::<T>();
        let items = if cols % pack == 0 { cols / pack } else { cols };
        let threads = items.div_ceil(32).clamp(1, 32) as u32 * 32;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };

        let s = &self.stream;
        // The guards record the buffers' use on this stream; they live until after the launch.
        let (xp, _gx) = x.device_ptr(s);
        let (wp, _gw) = weight.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let (rp, _gr) = match residual {
            Some(r) => {
                let (p, g) = r.device_ptr_mut(s);
                (p as usize as *mut c_void, Some(g))
            }
            None => (std::ptr::null_mut(), None),
        };
        let p = RmsNormParams {
            x: xp as usize as *const c_void,
            weight: wp as usize as *const c_void,
            residual: rp,
            out: op as usize as *mut c_void,
            rows: rows as i64,
            cols: cols as i64,
            x_row_stride: cols as i64,
            residual_row_stride: cols as i64,
            out_row_stride: cols as i64,
            eps,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&p);
        // SAFETY: the kernel reads rows*cols elements of x (and of residual) and cols of weight,
        // and writes rows*cols of out (and of residual): every length and the context of every
        // buffer were checked above; `out` and `residual` are distinct `&mut` borrows, so nothing
        // the kernel writes aliases anything it reads from another buffer; the pointers' guards
        // are held until the launch is enqueued.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching rms_norm", e))?;
        Ok(())
    }

    fn check_rms_norm<T: GpuDtype>(
        &self,
        x: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        residual: Option<&CudaSlice<T>>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        if rows == 0 || cols == 0 {
            return Err(Error::invalid(format!(
                "{OP}: empty input [rows={rows}, cols={cols}]"
            )));
        }
        // One block per row: the grid's x dimension holds at most 2^31 - 1 blocks.
        if rows > i32::MAX as usize || cols > i64::MAX as usize {
            return Err(Error::invalid(format!(
                "{OP}: [rows={rows}, cols={cols}] is more than one launch handles"
            )));
        }
        if !eps.is_finite() || eps < 0.0 {
            return Err(Error::invalid(format!(
                "{OP}: eps must be finite and >= 0, got {eps}"
            )));
        }
        self.check_buf(OP, "x", x, &[("rows", rows), ("cols", cols)])?;
        self.check_buf(OP, "weight", weight, &[("cols", cols)])?;
        if let Some(r) = residual {
            self.check_buf(OP, "residual", r, &[("rows", rows), ("cols", cols)])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded fatbin holds every target build.rs asks nvcc for (no GPU needed).
    #[test]
    fn fatbin_has_every_target() {
        let got = fatbin_targets(FATBIN).unwrap();
        let mut want: Vec<String> = FATBIN_TARGETS.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn fatbin_parser_rejects_garbage() {
        assert!(fatbin_targets(b"not a fatbin").is_err());
        let mut truncated = FATBIN[..40].to_vec();
        truncated.extend_from_slice(&[0; 8]);
        assert!(fatbin_targets(&truncated).is_err());
    }

    /// Without a driver or GPU, opening a device is an error that says so, never a panic; with
    /// one, the kernels load and an unknown kernel name is an error.
    #[test]
    fn opening_the_device_never_panics() {
        match Gpu::new(0) {
            Ok(g) => {
                println!("GPU: {}", g.name().unwrap());
                g.function("rms_norm_f32").unwrap();
                assert!(g.function("no_such_kernel").is_err());
            }
            Err(e) => {
                let m = e.to_string();
                println!("no GPU here: {m}");
                assert!(m.starts_with("cuda:"), "{m}");
            }
        }
        assert!(Gpu::new(1 << 20).is_err());
    }
}
