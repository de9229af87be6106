//! Safe launcher of the Mamba-2 gated group RMSNorm (kernels/gated_norm.cu).

use super::conv1d::{elem_ptr, Strided};
use super::params::GatedNormParams;
use super::{cuda_err, Gpu, GpuDtype};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::ffi::c_void;

// SAFETY: a plain C struct of pointers, integers and floats, passed by value as the kernel argument.
unsafe impl cudarc::driver::DeviceRepr for GatedNormParams {}

impl Gpu {
    /// Mamba-2 gated group RMSNorm (HF `FalconH1RMSNormGated`, `cpu::gated_rms_norm`), or the
    /// plain gate.
    ///
    /// `y, z [rows, Ds]` (strided), `out [rows, Ds]` dense. With `weight [Ds]`: each row splits
    /// into `groups` contiguous groups of `Ds / groups` channels normalised apart;
    /// `norm_before_gate = false` (the releases): `norm(y * silu(z)) * w`; `true`:
    /// `norm(y) * w * silu(z)`. f32 compute, rounded to `T` where HF casts to the input dtype.
    /// Without `weight`: `out = y * silu(z)` (`groups` and `eps` unused). Without `z`: no gate.
    /// Asynchronous on [`Gpu::stream`].
    #[allow(clippy::too_many_arguments)]
    pub fn gated_rms_norm_into<T: GpuDtype>(
        &self,
        y: Strided<'_, T>,
        z: Option<Strided<'_, T>>,
        weight: Option<&CudaSlice<T>>,
        out: &mut CudaSlice<T>,
        rows: usize,
        dim: usize,
        groups: usize,
        eps: f32,
        norm_before_gate: bool,
    ) -> Result<()> {
        const OP: &str = "gated_rms_norm";
        if rows == 0 || dim == 0 || groups == 0 {
            return Err(Error::invalid(format!(
                "{OP}: empty input [rows={rows}, Ds={dim}, G={groups}]"
            )));
        }
        let groups = if weight.is_some() { groups } else { 1 };
        if dim % groups != 0 {
            return Err(Error::invalid(format!(
                "{OP}: Ds={dim} is not a multiple of groups G={groups}"
            )));
        }
        if rows > i32::MAX as usize || groups > 65_535 {
            return Err(Error::invalid(format!(
                "{OP}: [rows={rows}, G={groups}] is more than one launch handles"
            )));
        }
        if !eps.is_finite() || eps < 0.0 {
            return Err(Error::invalid(format!(
                "{OP}: eps must be finite and >= 0, got {eps}"
            )));
        }
        self.check_strided(OP, "y", &y, rows, dim)?;
        if let Some(z) = &z {
            self.check_strided(OP, "z", z, rows, dim)?;
        }
        if let Some(w) = weight {
            self.check_buf(OP, "weight", w, &[("Ds", dim)])?;
        }
        self.check_buf(OP, "out", out, &[("rows", rows), ("Ds", dim)])?;

        let es = std::mem::size_of::<T>();
        let v = 16 / es;
        let gs = dim / groups;
        let s = &self.stream;
        let (yp, _g1) = y.buf.device_ptr(s);
        let zg = z.map(|z| (z.buf.device_ptr(s), z.offset, z.row_stride));
        let wg = weight.map(|w| w.device_ptr(s));
        let (op, _g2) = out.device_ptr_mut(s);
        let a16 = |base: u64, off: usize| (base as usize + off * es) % 16 == 0;
        let vec = gs % v == 0
            && dim % v == 0
            && y.row_stride % v == 0
            && a16(yp, y.offset)
            && a16(op, 0)
            && zg
                .as_ref()
                .map_or(true, |((p, _), off, rs)| rs % v == 0 && a16(*p, *off))
            && wg.as_ref().map_or(true, |(p, _)| a16(*p, 0));
        let items = if vec { gs / v } else { gs };
        let threads = items.div_ceil(32).clamp(1, 32) as u32 * 32;
        let prm = GatedNormParams {
            y: elem_ptr::<T>(yp, y.offset),
            z: zg
                .as_ref()
                .map_or(std::ptr::null(), |((p, _), off, _)| elem_ptr::<T>(*p, *off)),
            weight: wg
                .as_ref()
                .map_or(std::ptr::null(), |(p, _)| elem_ptr::<T>(*p, 0)),
            out: op as usize as *mut c_void,
            rows: rows as i64,
            dim: dim as i64,
            groups: groups as i64,
            y_row_stride: y.row_stride as i64,
            z_row_stride: zg.as_ref().map_or(0, |(_, _, rs)| *rs) as i64,
            out_row_stride: dim as i64,
            eps,
            norm_before_gate: norm_before_gate as i32,
            vec: vec as i32,
        };
        let f = self.function(&format!("gated_norm_{}", T::SUFFIX))?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, groups as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&prm);
        // SAFETY: reads rows 0..rows of y and z within the checked extents and weight [Ds];
        // writes out [rows*Ds], a `&mut` borrow distinct from every input; guards held until the
        // launch is enqueued.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching gated_rms_norm", e))?;
        Ok(())
    }
}
