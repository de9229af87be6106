//! Device-side random fill, for benchmark weights of presets too big to make on the host.

use super::params::FillParams;
use super::{cuda_err, CudaSlice, Gpu, GpuDtype};
use crate::error::{Error, Result};
use cudarc::driver::{DevicePtrMut, LaunchConfig, PushKernelArg};
use std::ffi::c_void;

// SAFETY: a plain C struct of a pointer, integers and floats, passed by value as the kernel argument.
unsafe impl cudarc::driver::DeviceRepr for FillParams {}

impl Gpu {
    /// Fills `out` with values uniform in `[lo, hi)`, each a hash of `seed` and its index (the
    /// same on every run and card). Asynchronous on [`Gpu::stream`].
    pub fn fill_uniform<T: GpuDtype>(
        &self,
        out: &mut CudaSlice<T>,
        lo: f32,
        hi: f32,
        seed: u64,
    ) -> Result<()> {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(Error::invalid(format!(
                "fill_uniform: need finite lo <= hi, got [{lo}, {hi})"
            )));
        }
        self.check_buf("fill_uniform", "out", out, &[("n", out.len())])?;
        if out.is_empty() {
            return Ok(());
        }
        let f = self.function(&format!("fill_uniform_{}", T::SUFFIX))?;
        let blocks = out.len().div_ceil(256).min(65_536) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = out.len();
        let s = self.stream();
        let (op, _g) = out.device_ptr_mut(s);
        let p = FillParams {
            out: op as usize as *mut c_void,
            n: n as i64,
            lo,
            hi,
            seed,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&p);
        // SAFETY: the kernel writes elements 0..n of `out` (its length) and reads nothing; the
        // guard keeps the buffer alive until the launch is enqueued.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching fill_uniform", e))?;
        Ok(())
    }
}
