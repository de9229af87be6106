//! The CUDA backend's foundation: the embedded fatbin (every kernels/*.cu, built by build.rs),
//! a context with one module loaded once and its functions cached by name, one non-default stream,
//! and safe launchers that validate every input before any `unsafe`.
//!
//! Nothing links against CUDA at build time: cudarc finds libcuda when [`Gpu::new`] runs, and a
//! machine without a driver gets an error, not a panic.

pub mod params;

use crate::error::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use params::RmsNormParams;

/// Every kernel of kernels/*.cu in one fatbin: sm_80, sm_86, sm_89, sm_90a and compute_80 PTX.
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// An element type the kernels are built for; `SUFFIX` completes a kernel name (`rms_norm_bf16`).
pub trait GpuDtype: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// Kernel name suffix.
    const SUFFIX: &'static str;
    /// From f32 (round to nearest).
    fn from_f32(v: f32) -> Self;
    /// To f32.
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

/// One GPU: its context, the kernel module (loaded once), a cache of kernel handles, and the
/// stream every launch goes to (never the legacy default stream).
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl Gpu {
    /// Opens device `ordinal` and loads the kernels. Errors (never panics) when there is no driver,
    /// no such device, or the fatbin has no image for this card.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        // SAFETY: only probes whether libcuda can be opened.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Cuda(
                "no CUDA driver found (libcuda could not be loaded)".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err("opening the device", e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda_err("creating a stream", e))?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(FATBIN.to_vec()))
            .map_err(|e| cuda_err("loading the kernel fatbin", e))?;
        Ok(Gpu {
            ctx,
            stream,
            module,
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The device's name.
    pub fn name(&self) -> Result<String> {
        self.ctx.name().map_err(|e| cuda_err("device name", e))
    }

    /// The stream every launch of this `Gpu` goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A kernel by name, loaded from the module once and cached.
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().expect("function cache lock");
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let f = self
            .module
            .load_function(name)
            .map_err(|e| cuda_err(&format!("kernel `{name}`"), e))?;
        cache.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Copies host values to a new device buffer.
    pub fn upload<T: GpuDtype>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .map_err(|e| cuda_err("host to device copy", e))
    }

    /// A zeroed device buffer of `len` elements.
    pub fn zeros<T: GpuDtype>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(len)
            .map_err(|e| cuda_err(&format!("allocating {len} elements"), e))
    }

    /// Copies a device buffer to the host (waits for the stream).
    pub fn download<T: GpuDtype>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(dev)
            .map_err(|e| cuda_err("device to host copy", e))
    }

    /// Waits for every launch on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))
    }

    /// RMSNorm of each row of `x [rows, cols]` times `weight [cols]` into `out [rows, cols]`;
    /// with `residual [rows, cols]`, first `residual += x` (written back) and the norm is of the sum.
    /// f32 accumulation whatever `T` is.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm<T: GpuDtype>(
        &self,
        x: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        residual: Option<&mut CudaSlice<T>>,
        out: &mut CudaSlice<T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::invalid(format!("rms_norm: [{rows}, {cols}] overflows")))?;
        if rows == 0 || cols == 0 {
            return Err(Error::invalid(format!(
                "rms_norm: empty input [{rows}, {cols}]"
            )));
        }
        if rows > i32::MAX as usize {
            return Err(Error::invalid(format!(
                "rms_norm: {rows} rows is more than one launch handles"
            )));
        }
        let check = |name: &str, len: usize, want: usize, shape: String| {
            if len != want {
                Err(Error::invalid(format!(
                    "rms_norm: `{name}` has {len} elements, expected {shape} = {want}"
                )))
            } else {
                Ok(())
            }
        };
        check("x", x.len(), n, format!("[{rows}, {cols}]"))?;
        check("weight", weight.len(), cols, format!("[{cols}]"))?;
        check("out", out.len(), n, format!("[{rows}, {cols}]"))?;
        if let Some(r) = residual.as_ref() {
            check("residual", r.len(), n, format!("[{rows}, {cols}]"))?;
        }
        if !eps.is_finite() || eps < 0.0 {
            return Err(Error::invalid(format!(
                "rms_norm: eps must be finite and >= 0, got {eps}"
            )));
        }
        let f = self.function(&format!("rms_norm_{}", T::SUFFIX))?;
        let s = &self.stream;
        // The pointer guards live until after the launch is enqueued.
        let (xp, _gx) = x.device_ptr(s);
        let (wp, _gw) = weight.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let mut res_guard = None;
        let rp = match residual {
            Some(r) => {
                let (p, g) = r.device_ptr_mut(s);
                res_guard = Some(g);
                p as usize as *mut std::ffi::c_void
            }
            None => std::ptr::null_mut(),
        };
        let p = RmsNormParams {
            x: xp as usize as *const std::ffi::c_void,
            weight: wp as usize as *const std::ffi::c_void,
            residual: rp,
            out: op as usize as *mut std::ffi::c_void,
            rows: rows as i64,
            cols: cols as i64,
            x_row_stride: cols as i64,
            residual_row_stride: cols as i64,
            out_row_stride: cols as i64,
            eps,
        };
        let threads = if cols >= 2048 { 512 } else { 256 };
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&p);
        // SAFETY: the kernel reads rows*cols elements of x (and residual) and cols of weight, and
        // writes rows*cols of out (and residual): every length was checked above, the pointers
        // come from live buffers of this context whose guards are held until after the launch.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching rms_norm", e))?;
        drop(res_guard);
        Ok(())
    }
}
