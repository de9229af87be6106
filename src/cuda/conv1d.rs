//! Safe launchers of the causal depthwise conv1d kernels (kernels/conv1d.cu): packed varlen
//! prefill with per-slot conv states, and the one-token decode update. Also [`Strided`], the
//! `[rows, width]` view into a wider buffer that the Mamba-2 launchers of this crate take for
//! inputs that are column slices of the input projection.

use super::params::Conv1dParams;
use super::{cuda_err, opt_ptr, opt_ptr_mut, Gpu, GpuDtype};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::ffi::c_void;
use std::sync::Arc;

// SAFETY: a plain C struct of pointers and integers, passed by value as the kernel argument.
unsafe impl cudarc::driver::DeviceRepr for Conv1dParams {}

/// A `[rows, width]` matrix inside a larger buffer: row `r`, column `j` is element
/// `offset + r * row_stride + j` of `buf` (e.g. the xBC columns of the input projection's output).
#[derive(Debug)]
pub struct Strided<'a, T> {
    /// The buffer holding the matrix.
    pub buf: &'a CudaSlice<T>,
    /// Element offset of row 0, column 0.
    pub offset: usize,
    /// Elements between consecutive rows (at least the matrix width).
    pub row_stride: usize,
}

// Manual impls: derive would require `T: Clone`, and only the reference is copied.
impl<T> Clone for Strided<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Strided<'_, T> {}

impl<'a, T> Strided<'a, T> {
    /// A dense matrix whose rows are `width` elements long, starting at element 0.
    pub fn dense(buf: &'a CudaSlice<T>, width: usize) -> Self {
        Strided {
            buf,
            offset: 0,
            row_stride: width,
        }
    }
}

/// Sizes of one conv1d call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv1dDims {
    /// Sequences (prefill: packed along the tokens; decode: one token each).
    pub batch: usize,
    /// Rows of x over all sequences (prefill); decode ignores it (one row per sequence).
    pub tokens: usize,
    /// Channels (C; Mamba-2's conv_dim = d_ssm + 2 G N).
    pub channels: usize,
    /// Kernel width (K), 2 to 4.
    pub width: usize,
    /// SiLU on the output (Mamba-2 always sets it).
    pub silu: bool,
}

/// The device address of element `offset` of `buf`, as the kernel's `void*`.
pub(crate) fn elem_ptr<T>(base: u64, offset: usize) -> *const c_void {
    (base as usize + offset * std::mem::size_of::<T>()) as *const c_void
}

impl Gpu {
    /// Checks a strided matrix argument: row stride at least `cols`, every element of its
    /// `[rows, cols]` inside the buffer, and the buffer in this `Gpu`'s context.
    pub(crate) fn check_strided<T>(
        &self,
        op: &str,
        name: &str,
        m: &Strided<'_, T>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if m.row_stride < cols {
            return Err(Error::invalid(format!(
                "{op}: `{name}` row stride {} is smaller than its width {cols}",
                m.row_stride
            )));
        }
        let need = rows
            .checked_sub(1)
            .and_then(|r| r.checked_mul(m.row_stride))
            .and_then(|n| n.checked_add(m.offset))
            .and_then(|n| n.checked_add(cols))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{op}: `{name}` [{rows}, {cols}] at offset {} with row stride {} overflows \
                     or is empty",
                    m.offset, m.row_stride
                ))
            })?;
        if m.buf.len() < need {
            return Err(Error::invalid(format!(
                "{op}: `{name}` has {} elements, [{rows}, {cols}] at offset {} with row stride {} \
                 needs {need}",
                m.buf.len(),
                m.offset,
                m.row_stride
            )));
        }
        if !Arc::ptr_eq(m.buf.context(), &self.ctx) {
            return Err(Error::invalid(format!(
                "{op}: `{name}` lives on device {} (another context), this Gpu is device {}",
                m.buf.ordinal(),
                self.ordinal()
            )));
        }
        Ok(())
    }

    /// Causal depthwise conv1d over a packed batch of sequences (Mamba-2 prefill), allocating
    /// `out [tokens, C]`. See [`Gpu::conv1d_fwd_into`].
    #[allow(clippy::too_many_arguments)]
    pub fn conv1d_fwd<T: GpuDtype>(
        &self,
        x: Strided<'_, T>,
        weight: &CudaSlice<T>,
        bias: Option<&CudaSlice<T>>,
        conv_state: Option<&mut CudaSlice<T>>,
        cu_seqlens: Option<&CudaSlice<i32>>,
        slot_idx: Option<&CudaSlice<i32>>,
        dims: Conv1dDims,
    ) -> Result<CudaSlice<T>> {
        let n = dims.tokens.checked_mul(dims.channels).unwrap_or(0);
        if n == 0 {
            return Err(Error::invalid(format!(
                "conv1d_fwd: empty input [tokens={}, C={}]",
                dims.tokens, dims.channels
            )));
        }
        // SAFETY: uninitialised device memory of the checked size; conv1d_fwd_into writes all of
        // it (every token lies in one sequence of a well-formed cu_seqlens) or returns an error
        // before launching, and then it is dropped.
        let mut out = unsafe { self.stream.alloc::<T>(n) }
            .map_err(|e| cuda_err("conv1d_fwd: allocating out", e))?;
        self.conv1d_fwd_into(
            x, weight, bias, conv_state, cu_seqlens, slot_idx, &mut out, dims,
        )?;
        Ok(out)
    }

    /// Causal depthwise conv1d + bias (+ SiLU) over a packed batch of sequences (prefill).
    ///
    /// - `x [tokens, C]` (strided: usually the xBC columns of the input projection);
    /// - `weight [C, K]`, `bias [C]` (optional): `out_t[c] = bias[c] + sum_k w[c,k] *
    ///   x_{t-K+1+k}[c]`, `w[c, K-1]` multiplying the current token (as `cpu::causal_conv1d`);
    /// - `conv_state [slots, C, K-1]` (optional): per slot, the K-1 inputs before the sequence
    ///   (oldest first) are read as its initial state, then replaced by its final state (the last
    ///   K-1 inputs of state ++ x). Two launches do it, the second after the first on the stream,
    ///   so the in-place update cannot race with reads of the initial state;
    /// - `cu_seqlens [batch + 1]` (int32): sequence s is tokens `cu[s]..cu[s+1]`; it must be
    ///   non-decreasing from 0 to `tokens` (on the device, so unchecked here: the kernel clamps
    ///   it into range, and a token outside every sequence is left unwritten). `None`: one
    ///   sequence (`batch` must be 1);
    /// - `slot_idx [batch]` (int32, optional, default slot s for sequence s): distinct slots; an
    ///   index outside `[0, slots)` means no state (zeros in, nothing written back);
    /// - `out [tokens, C]` dense.
    ///
    /// f32 accumulation; asynchronous on [`Gpu::stream`].
    #[allow(clippy::too_many_arguments)]
    pub fn conv1d_fwd_into<T: GpuDtype>(
        &self,
        x: Strided<'_, T>,
        weight: &CudaSlice<T>,
        bias: Option<&CudaSlice<T>>,
        conv_state: Option<&mut CudaSlice<T>>,
        cu_seqlens: Option<&CudaSlice<i32>>,
        slot_idx: Option<&CudaSlice<i32>>,
        out: &mut CudaSlice<T>,
        dims: Conv1dDims,
    ) -> Result<()> {
        const OP: &str = "conv1d_fwd";
        let Conv1dDims {
            batch,
            tokens,
            channels: c,
            width: k,
            silu,
        } = dims;
        if batch == 0 || tokens == 0 || c == 0 {
            return Err(Error::invalid(format!(
                "{OP}: empty input [batch={batch}, tokens={tokens}, C={c}]"
            )));
        }
        if !(2..=4).contains(&k) {
            return Err(Error::invalid(format!(
                "{OP}: conv width K must be 2, 3 or 4, got {k}"
            )));
        }
        if tokens > i32::MAX as usize || c > i32::MAX as usize || batch > 65_535 {
            return Err(Error::invalid(format!(
                "{OP}: [batch={batch}, tokens={tokens}, C={c}] is more than one launch handles \
                 (int32 cu_seqlens, at most 65535 sequences)"
            )));
        }
        self.check_strided(OP, "x", &x, tokens, c)?;
        self.check_buf(OP, "weight", weight, &[("C", c), ("K", k)])?;
        if let Some(b) = bias {
            self.check_buf(OP, "bias", b, &[("C", c)])?;
        }
        self.check_buf(OP, "out", out, &[("tokens", tokens), ("C", c)])?;
        match cu_seqlens {
            Some(cu) => self.check_buf(OP, "cu_seqlens", cu, &[("batch + 1", batch + 1)])?,
            None if batch != 1 => {
                return Err(Error::invalid(format!(
                    "{OP}: batch {batch} needs cu_seqlens [batch + 1]; without it x is one sequence"
                )))
            }
            None => {}
        }
        let slots = self.check_conv_state(OP, conv_state.as_deref(), slot_idx, batch, c, k)?;

        let es = std::mem::size_of::<T>();
        let v = 16 / es;
        let s = &self.stream;
        let (xp, _gx) = x.buf.device_ptr(s);
        let (wp, _gw) = weight.device_ptr(s);
        let (bp, _gb) = opt_ptr(bias, s);
        let (op, _go) = out.device_ptr_mut(s);
        let (sp, _gs) = opt_ptr_mut(conv_state, s);
        let (cup, _gc) = opt_ptr(cu_seqlens, s);
        let (slp, _gl) = opt_ptr(slot_idx, s);
        let x_addr = xp as usize + x.offset * es;
        let vec = c % v == 0 && x.row_stride % v == 0 && x_addr % 16 == 0 && op % 16 == 0;
        let lanes = if vec { c / v } else { c };
        // 64 threads (the kernel's launch bound) of 16-byte packs cover the 7B conv_dim (3584
        // bf16 = 448 packs) in 7 full blocks; each thread walks 32 tokens (the K-1 rows re-read
        // before each run cost 3/32, from L2), more only where the grid's y dimension would
        // overflow.
        let threads: usize = 64;
        let tpb = 32usize.max(tokens.div_ceil(65_535));
        let mut p = Conv1dParams {
            x: elem_ptr::<T>(xp, x.offset),
            weight: elem_ptr::<T>(wp, 0),
            bias: if bias.is_some() {
                elem_ptr::<T>(bp, 0)
            } else {
                std::ptr::null()
            },
            out: op as usize as *mut c_void,
            conv_state: sp as usize as *mut c_void,
            cu_seqlens: if cu_seqlens.is_some() {
                cup as usize as *const c_void
            } else {
                std::ptr::null()
            },
            slot_idx: if slot_idx.is_some() {
                slp as usize as *const c_void
            } else {
                std::ptr::null()
            },
            batch: batch as i64,
            tokens: tokens as i64,
            channels: c as i64,
            width: k as i64,
            slots: slots as i64,
            x_row_stride: x.row_stride as i64,
            out_row_stride: c as i64,
            tokens_per_block: tpb as i64,
            silu: silu as i32,
            vec: vec as i32,
        };
        let f = self.function(&format!("conv1d_fwd_{}", T::SUFFIX))?;
        let cfg = LaunchConfig {
            grid_dim: (
                lanes.div_ceil(threads) as u32,
                tokens.div_ceil(tpb) as u32,
                1,
            ),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&p);
        // SAFETY: the kernel reads x inside [offset, offset + (tokens-1)*row_stride + C) (checked
        // above; cu_seqlens values are clamped to [0, tokens] on the device), weight [C*K], bias
        // [C], cu_seqlens [batch+1], slot_idx [batch] and conv_state rows of slots in [0, slots)
        // only; it writes out [tokens*C]. `out` and `conv_state` are `&mut` borrows, so nothing
        // written aliases anything read; the guards live until after both launches.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching conv1d_fwd", e))?;
        if sp != 0 {
            p.vec = 0;
            let f = self.function(&format!("conv1d_fwd_state_{}", T::SUFFIX))?;
            let cfg = LaunchConfig {
                grid_dim: (c.div_ceil(256) as u32, batch as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = s.launch_builder(&f);
            b.arg(&p);
            // SAFETY: as above; it writes conv_state rows of valid slots, each (slot, channel)
            // row by one thread that reads the whole row before writing it. Same stream, so it
            // starts after the first kernel's last read of the initial state.
            unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching conv1d_fwd_state", e))?;
        }
        Ok(())
    }

    /// One decode step of the causal conv for `batch` sequences, one token each.
    ///
    /// `x [batch, C]` (strided), `conv_state [slots, C, K-1]` updated in place (shifted left by
    /// one, x appended; sequence b uses slot `slot_idx[b]`, or b without `slot_idx`; a slot
    /// outside `[0, slots)` reads zeros and writes nothing), `weight [C, K]`, `bias [C]`
    /// (optional), `out [batch, C]` dense: `out = bias + sum_{j<K-1} w[c,j] state[c,j] +
    /// w[c,K-1] x`, SiLU'd when `dims.silu` (as `cpu::causal_conv1d_update`). `dims.tokens` is
    /// ignored. Asynchronous on [`Gpu::stream`].
    #[allow(clippy::too_many_arguments)]
    pub fn conv1d_update_into<T: GpuDtype>(
        &self,
        x: Strided<'_, T>,
        weight: &CudaSlice<T>,
        bias: Option<&CudaSlice<T>>,
        conv_state: &mut CudaSlice<T>,
        slot_idx: Option<&CudaSlice<i32>>,
        out: &mut CudaSlice<T>,
        dims: Conv1dDims,
    ) -> Result<()> {
        const OP: &str = "conv1d_update";
        let Conv1dDims {
            batch,
            channels: c,
            width: k,
            silu,
            ..
        } = dims;
        if batch == 0 || c == 0 {
            return Err(Error::invalid(format!(
                "{OP}: empty input [batch={batch}, C={c}]"
            )));
        }
        if !(2..=4).contains(&k) {
            return Err(Error::invalid(format!(
                "{OP}: conv width K must be 2, 3 or 4, got {k}"
            )));
        }
        if batch > 65_535 || c > i32::MAX as usize {
            return Err(Error::invalid(format!(
                "{OP}: [batch={batch}, C={c}] is more than one launch handles (batch <= 65535)"
            )));
        }
        self.check_strided(OP, "x", &x, batch, c)?;
        self.check_buf(OP, "weight", weight, &[("C", c), ("K", k)])?;
        if let Some(b) = bias {
            self.check_buf(OP, "bias", b, &[("C", c)])?;
        }
        self.check_buf(OP, "out", out, &[("batch", batch), ("C", c)])?;
        let slots = self.check_conv_state(OP, Some(&*conv_state), slot_idx, batch, c, k)?;

        let s = &self.stream;
        let (xp, _gx) = x.buf.device_ptr(s);
        let (wp, _gw) = weight.device_ptr(s);
        let (bp, _gb) = opt_ptr(bias, s);
        let (op, _go) = out.device_ptr_mut(s);
        let (sp, _gs) = conv_state.device_ptr_mut(s);
        let (slp, _gl) = opt_ptr(slot_idx, s);
        let p = Conv1dParams {
            x: elem_ptr::<T>(xp, x.offset),
            weight: elem_ptr::<T>(wp, 0),
            bias: if bias.is_some() {
                elem_ptr::<T>(bp, 0)
            } else {
                std::ptr::null()
            },
            out: op as usize as *mut c_void,
            conv_state: sp as usize as *mut c_void,
            cu_seqlens: std::ptr::null(),
            slot_idx: if slot_idx.is_some() {
                slp as usize as *const c_void
            } else {
                std::ptr::null()
            },
            batch: batch as i64,
            tokens: batch as i64,
            channels: c as i64,
            width: k as i64,
            slots: slots as i64,
            x_row_stride: x.row_stride as i64,
            out_row_stride: c as i64,
            tokens_per_block: 1,
            silu: silu as i32,
            vec: 0,
        };
        let f = self.function(&format!("conv1d_update_{}", T::SUFFIX))?;
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(256) as u32, batch as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&p);
        // SAFETY: reads x rows 0..batch (checked), weight, bias, slot_idx [batch]; reads and
        // writes conv_state rows of slots in [0, slots) only (checked on the device), each
        // (slot, channel) row by one thread; writes out [batch*C]. Distinct `&mut` borrows;
        // guards held until the launch is enqueued.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching conv1d_update", e))?;
        Ok(())
    }

    /// Checks `conv_state [slots, C, K-1]` and `slot_idx [batch]`; returns `slots` (0 without a
    /// state).
    fn check_conv_state<T>(
        &self,
        op: &str,
        conv_state: Option<&CudaSlice<T>>,
        slot_idx: Option<&CudaSlice<i32>>,
        batch: usize,
        c: usize,
        k: usize,
    ) -> Result<usize> {
        if let Some(sl) = slot_idx {
            self.check_buf(op, "slot_idx", sl, &[("batch", batch)])?;
        }
        let Some(st) = conv_state else {
            return Ok(0);
        };
        let row = c * (k - 1);
        if st.is_empty() || st.len() % row != 0 {
            return Err(Error::invalid(format!(
                "{op}: `conv_state` has {} elements, expected [slots, C={c}, K-1={}] with \
                 slots >= 1",
                st.len(),
                k - 1
            )));
        }
        let slots = st.len() / row;
        if slot_idx.is_none() && slots < batch {
            return Err(Error::invalid(format!(
                "{op}: `conv_state` has {slots} slots, fewer than the batch {batch} (without \
                 slot_idx sequence b uses slot b)"
            )));
        }
        if slots > i32::MAX as usize {
            return Err(Error::invalid(format!(
                "{op}: `conv_state` has {slots} slots, more than int32 slot indices address"
            )));
        }
        self.check_buf(
            op,
            "conv_state",
            st,
            &[("slots", slots), ("C", c), ("K-1", k - 1)],
        )?;
        Ok(slots)
    }
}
