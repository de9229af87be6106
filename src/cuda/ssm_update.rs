//! Safe launcher of the Mamba-2 one-token SSM state update (kernels/ssm_update.cu).

use super::conv1d::{elem_ptr, Strided};
use super::params::SsmUpdateParams;
use super::{cuda_err, Gpu, GpuDtype};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::ffi::c_void;

// SAFETY: a plain C struct of pointers, integers and floats, passed by value as the kernel argument.
unsafe impl cudarc::driver::DeviceRepr for SsmUpdateParams {}

/// The dtype the SSM state is stored in: f32, or bf16 (half the traffic; computed in f32 and
/// rounded after each update).
pub trait SsmStateDtype: GpuDtype {}
impl SsmStateDtype for f32 {}
impl SsmStateDtype for half::bf16 {}

/// Sizes of one [`Gpu::ssm_update`] call (one token per sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsmUpdateCudaDims {
    /// Sequences (B).
    pub batch: usize,
    /// Heads (H).
    pub heads: usize,
    /// Channels per head (P).
    pub head_dim: usize,
    /// B/C groups (G); H must be a multiple of it.
    pub groups: usize,
    /// State size (N).
    pub state: usize,
}

/// Inputs of [`Gpu::ssm_update`]: rows of wider matrices (column slices of the projection).
#[derive(Debug, Clone, Copy)]
pub struct SsmUpdateInputs<'a, T> {
    /// `[B, H*P]`: head h, channel p at column `h*P + p`.
    pub x: Strided<'a, T>,
    /// `[B, H]` raw: the step is `clamp(softplus(dt + dt_bias), dt_limit)`.
    pub dt: Strided<'a, T>,
    /// `[H]`.
    pub dt_bias: &'a CudaSlice<T>,
    /// `[H]`; `A = -exp(a_log)`.
    pub a_log: &'a CudaSlice<T>,
    /// `[B, G*N]`: group g, state n at column `g*N + n`; head h reads group `h / (H/G)`.
    pub b: Strided<'a, T>,
    /// `[B, G*N]`.
    pub c: Strided<'a, T>,
    /// `[H]` skip (`y += D x`), optional.
    pub d: Option<&'a CudaSlice<T>>,
    /// `[B, H*P]` gate (`y *= silu(z)`), optional.
    pub z: Option<Strided<'a, T>>,
    /// `(lo, hi)` clamp of dt; `(0, inf)` is a no-op.
    pub dt_limit: (f32, f32),
    /// int32 `[B]`: the state slot of each sequence (default: slot b). A slot outside
    /// `[0, slots)` marks padding: its state is untouched and its y row is not written.
    pub slot_idx: Option<&'a CudaSlice<i32>>,
}

impl Gpu {
    /// One decode token of the Mamba-2 SSM for every sequence (semantics of
    /// `cpu::ssm_state_update`), per sequence b and head h:
    /// `S = exp(dt A) S + dt x (outer) B`, `y = S C + D x`, `y *= silu(z)`, in f32.
    ///
    /// `state [slots, H, P, N]` in `S` (f32 or bf16) is updated in place; inputs as in
    /// [`SsmUpdateInputs`] in `T` (f32, bf16, f16); `y [B, H*P]` dense. Asynchronous on
    /// [`Gpu::stream`].
    pub fn ssm_update<T: GpuDtype, S: SsmStateDtype>(
        &self,
        state: &mut CudaSlice<S>,
        inp: &SsmUpdateInputs<'_, T>,
        y: &mut CudaSlice<T>,
        dims: SsmUpdateCudaDims,
    ) -> Result<()> {
        const OP: &str = "ssm_update";
        let SsmUpdateCudaDims {
            batch,
            heads: h,
            head_dim: p,
            groups: g,
            state: n,
        } = dims;
        if batch == 0 || h == 0 || p == 0 || g == 0 || n == 0 {
            return Err(Error::invalid(format!(
                "{OP}: empty dims [B={batch}, H={h}, P={p}, G={g}, N={n}]"
            )));
        }
        if h % g != 0 {
            return Err(Error::invalid(format!(
                "{OP}: heads H={h} is not a multiple of groups G={g}"
            )));
        }
        if batch > 65_535 || h > 65_535 || p > i32::MAX as usize {
            return Err(Error::invalid(format!(
                "{OP}: [B={batch}, H={h}, P={p}] is more than one launch handles \
                 (B and H at most 65535)"
            )));
        }
        let (lo, hi) = inp.dt_limit;
        if lo.is_nan() || hi.is_nan() || lo < 0.0 || lo > hi {
            return Err(Error::invalid(format!(
                "{OP}: dt_limit must be 0 <= lo <= hi, got ({lo}, {hi})"
            )));
        }
        self.check_strided(OP, "x", &inp.x, batch, h * p)?;
        self.check_strided(OP, "dt", &inp.dt, batch, h)?;
        self.check_strided(OP, "b", &inp.b, batch, g * n)?;
        self.check_strided(OP, "c", &inp.c, batch, g * n)?;
        if let Some(z) = &inp.z {
            self.check_strided(OP, "z", z, batch, h * p)?;
        }
        self.check_buf(OP, "dt_bias", inp.dt_bias, &[("H", h)])?;
        self.check_buf(OP, "a_log", inp.a_log, &[("H", h)])?;
        if let Some(d) = inp.d {
            self.check_buf(OP, "d", d, &[("H", h)])?;
        }
        self.check_buf(OP, "y", y, &[("B", batch), ("H*P", h * p)])?;
        if let Some(sl) = inp.slot_idx {
            self.check_buf(OP, "slot_idx", sl, &[("B", batch)])?;
        }
        let per_slot = h * p * n;
        if state.is_empty() || state.len() % per_slot != 0 {
            return Err(Error::invalid(format!(
                "{OP}: `state` has {} elements, expected [slots, H={h}, P={p}, N={n}] with \
                 slots >= 1",
                state.len()
            )));
        }
        let slots = state.len() / per_slot;
        if inp.slot_idx.is_none() && slots < batch {
            return Err(Error::invalid(format!(
                "{OP}: `state` has {slots} slots, fewer than the batch {batch} (without \
                 slot_idx sequence b uses slot b)"
            )));
        }
        self.check_buf(
            OP,
            "state",
            state,
            &[("slots", slots), ("H", h), ("P", p), ("N", n)],
        )?;

        // 16 rows of P per block (4 per warp) keep 4 row loads in flight per thread and give
        // batch 1 of the 7B (P = 128, H = 24) 192 blocks; small P takes fewer rows.
        let rows_per_block = if p >= 16 { 16 } else { 4 };
        let s = &self.stream;
        let (xp, _g1) = inp.x.buf.device_ptr(s);
        let (dtp, _g2) = inp.dt.buf.device_ptr(s);
        let (dbp, _g3) = inp.dt_bias.device_ptr(s);
        let (alp, _g4) = inp.a_log.device_ptr(s);
        let (bp, _g5) = inp.b.buf.device_ptr(s);
        let (cp, _g6) = inp.c.buf.device_ptr(s);
        let dg = inp.d.map(|d| d.device_ptr(s));
        let zg = inp.z.map(|z| z.buf.device_ptr(s));
        let slg = inp.slot_idx.map(|sl| sl.device_ptr(s));
        let (yp, _g7) = y.device_ptr_mut(s);
        let (sp, _g8) = state.device_ptr_mut(s);
        let prm = SsmUpdateParams {
            state: sp as usize as *mut c_void,
            x: elem_ptr::<T>(xp, inp.x.offset),
            dt: elem_ptr::<T>(dtp, inp.dt.offset),
            dt_bias: elem_ptr::<T>(dbp, 0),
            a_log: elem_ptr::<T>(alp, 0),
            b: elem_ptr::<T>(bp, inp.b.offset),
            c: elem_ptr::<T>(cp, inp.c.offset),
            d: dg
                .as_ref()
                .map_or(std::ptr::null(), |(p, _)| elem_ptr::<T>(*p, 0)),
            z: match (&zg, &inp.z) {
                (Some((p, _)), Some(z)) => elem_ptr::<T>(*p, z.offset),
                _ => std::ptr::null(),
            },
            slot_idx: slg
                .as_ref()
                .map_or(std::ptr::null(), |(p, _)| *p as usize as *const c_void),
            y: yp as usize as *mut c_void,
            batch: batch as i64,
            heads: h as i64,
            head_dim: p as i64,
            groups: g as i64,
            state_dim: n as i64,
            slots: slots as i64,
            x_row_stride: inp.x.row_stride as i64,
            dt_row_stride: inp.dt.row_stride as i64,
            b_row_stride: inp.b.row_stride as i64,
            c_row_stride: inp.c.row_stride as i64,
            z_row_stride: inp.z.map_or(0, |z| z.row_stride) as i64,
            y_row_stride: (h * p) as i64,
            rows_per_block: rows_per_block as i64,
            dt_lo: lo,
            dt_hi: hi,
        };
        let f = self.function(&format!("ssm_update_{}_state_{}", T::SUFFIX, S::SUFFIX))?;
        let cfg = LaunchConfig {
            grid_dim: (p.div_ceil(rows_per_block) as u32, h as u32, batch as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&prm);
        // SAFETY: the kernel reads rows 0..B of x, dt, b, c, z within the checked extents,
        // dt_bias, a_log, d [H], slot_idx [B]; it reads and writes the state of slots in
        // [0, slots) only (checked on the device) and writes y [B*H*P]. `state` and `y` are
        // `&mut` borrows, so nothing written aliases anything read; every guard is held until
        // the launch is enqueued.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching ssm_update", e))?;
        Ok(())
    }
}
