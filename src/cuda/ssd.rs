//! Safe launcher of the Mamba-2 SSD chunked prefill (kernels/ssd.cu) over a packed varlen batch:
//! the GPU counterpart of [`crate::cpu::ssd::ssd_chunked`].
//!
//! Four launches on [`Gpu::stream`]: `C B^T` per chunk and group (shared by the group's
//! heads), chunk states (`x^T B` per chunk and head), the sequential state passing over each
//! sequence's chunks (which also reads the initial and writes the final state), and the chunk
//! scan (`y`); the matrix products run on tensor cores for bf16/f16. The varlen layout comes
//! from the host (`cu_seqlens`, `slots`): the launcher splits every sequence into chunks and
//! uploads that table, so the kernels never search for their sequence.

use super::params::SsdParams;
use super::{cuda_err, Gpu, GpuDtype};
use crate::error::{Error, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use std::ffi::c_void;

// SAFETY: a plain C struct of pointers and integers, passed by value as the kernel argument.
unsafe impl cudarc::driver::DeviceRepr for SsdParams {}

/// Sizes of one [`Gpu::ssd_chunked`] call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsdCudaDims {
    /// Heads (H).
    pub heads: usize,
    /// Channels per head (P): 64 or 128.
    pub head_dim: usize,
    /// B/C groups (G); H must be a multiple of it.
    pub groups: usize,
    /// State size (N): 64, 128 or 256.
    pub state: usize,
    /// Tokens per chunk: 64, 128 or 256.
    pub chunk_size: usize,
    /// `(lo, hi)` clamp of `softplus(dt + dt_bias)`; `(0, inf)` is a no-op.
    pub dt_limit: (f32, f32),
}

/// A `[rows, width]` matrix inside a larger buffer (the x, dt, B or C columns of the conv
/// output): the same view type the conv and state-update launchers take.
pub use super::conv1d::Strided as Cols;

/// Inputs of [`Gpu::ssd_chunked`]; `T` (total tokens) is `cu_seqlens.last()`.
#[derive(Debug, Clone, Copy)]
pub struct SsdCudaInputs<'a, T: GpuDtype> {
    /// `[T, H*P]` (x of token t, head h, channel p at column `h*P + p`).
    pub x: Cols<'a, T>,
    /// `[T, H]` raw time steps: the step is `clamp(softplus(dt + dt_bias), dt_limit)`.
    pub dt: Cols<'a, T>,
    /// `[H]`.
    pub dt_bias: &'a CudaSlice<T>,
    /// `[H]`; `A = -exp(a_log)`.
    pub a_log: &'a CudaSlice<T>,
    /// `[T, G*N]`.
    pub b: Cols<'a, T>,
    /// `[T, G*N]`.
    pub c: Cols<'a, T>,
    /// `[H]` skip `y += D x`, or `None`.
    pub d: Option<&'a CudaSlice<T>>,
}

/// Device addresses of an SSD call's inputs (each view at its offset; `d` null when absent).
struct InputPtrs {
    x: *const c_void,
    dt: *const c_void,
    dt_bias: *const c_void,
    a_log: *const c_void,
    b: *const c_void,
    c: *const c_void,
    d: *const c_void,
}

/// The inputs' device addresses, and the guards that must outlive the launches reading them.
fn input_ptrs<'a, T: GpuDtype>(
    inp: &SsdCudaInputs<'a, T>,
    s: &'a CudaStream,
) -> (InputPtrs, Vec<SyncOnDrop<'a>>) {
    let es = std::mem::size_of::<T>();
    let mut guards = Vec::with_capacity(7);
    let mut at = |buf: &'a CudaSlice<T>, offset: usize| {
        let (p, g) = buf.device_ptr(s);
        guards.push(g);
        (p as usize + offset * es) as *const c_void
    };
    let ptrs = InputPtrs {
        x: at(inp.x.buf, inp.x.offset),
        dt: at(inp.dt.buf, inp.dt.offset),
        dt_bias: at(inp.dt_bias, 0),
        a_log: at(inp.a_log, 0),
        b: at(inp.b.buf, inp.b.offset),
        c: at(inp.c.buf, inp.c.offset),
        d: match inp.d {
            Some(d) => at(d, 0),
            None => std::ptr::null(),
        },
    };
    (ptrs, guards)
}

/// Checks a varlen layout shared by the SSD launchers: H a non-zero multiple of G (at most
/// 65535), `lo <= hi`, `cu_seqlens` from 0, never decreasing, 1 to 65535 sequences and 1 to
/// 2^31 - 1 tokens, and `slots` (when given) one non-negative, distinct entry per sequence.
/// Returns (batch, tokens).
fn check_layout(
    op: &str,
    h: usize,
    g: usize,
    (lo, hi): (f32, f32),
    cu_seqlens: &[usize],
    slots: Option<&[i32]>,
) -> Result<(usize, usize)> {
    if h == 0 || g == 0 || h % g != 0 {
        return Err(bad(format!(
            "{op}: heads H = {h} must be a non-zero multiple of groups G = {g}"
        )));
    }
    if h > 65535 {
        return Err(bad(format!(
            "{op}: H = {h} heads is more than a launch handles (65535)"
        )));
    }
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(bad(format!(
            "{op}: dt_limit ({lo}, {hi}) must satisfy lo <= hi"
        )));
    }
    if cu_seqlens.len() < 2 {
        return Err(bad(format!(
            "{op}: `cu_seqlens` needs batch + 1 >= 2 entries, found {}",
            cu_seqlens.len()
        )));
    }
    let batch = cu_seqlens.len() - 1;
    if batch > 65535 {
        return Err(bad(format!(
            "{op}: batch {batch} is more than a launch handles (65535)"
        )));
    }
    if cu_seqlens[0] != 0 || cu_seqlens.windows(2).any(|w| w[1] < w[0]) {
        return Err(bad(format!(
            "{op}: `cu_seqlens` must start at 0 and never decrease, found {cu_seqlens:?}"
        )));
    }
    let t = cu_seqlens[batch];
    if t == 0 {
        return Err(bad(format!("{op}: no tokens (cu_seqlens ends at 0)")));
    }
    if t > i32::MAX as usize {
        return Err(bad(format!(
            "{op}: {t} tokens is more than the int32 chunk table holds"
        )));
    }
    if let Some(sl) = slots {
        if sl.len() != batch {
            return Err(bad(format!(
                "{op}: `slots` has {} entries, expected batch = {batch}",
                sl.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, &s) in sl.iter().enumerate() {
            if s < 0 {
                return Err(bad(format!("{op}: slots[{i}] = {s} is negative")));
            }
            if !seen.insert(s) {
                return Err(bad(format!(
                    "{op}: slot {s} is used by two sequences (slots[{i}])"
                )));
            }
        }
    }
    Ok((batch, t))
}

fn bad(msg: String) -> Error {
    Error::invalid(msg)
}

/// A varlen layout prepared once for [`Gpu::ssd_chunked_planned`]: the chunk table on the
/// device and the scratch buffers. The model runs every Mamba layer over the same batch, so
/// one plan serves all of them and no call uploads or allocates anything. Calls that share a
/// plan must go to the plan's `Gpu` (their scratch use is ordered by its one stream).
pub struct SsdPlan<T: GpuDtype> {
    dims: SsdCudaDims,
    batch: usize,
    tokens: usize,
    n_chunks: usize,
    slots: Option<Vec<i32>>,
    chunk_info: CudaSlice<i32>,
    seq_chunks: CudaSlice<i32>,
    slots_d: Option<CudaSlice<i32>>,
    chunk_states: CudaSlice<T>,
    cum_end: CudaSlice<f32>,
    cb: CudaSlice<f32>,
}

impl<T: GpuDtype> SsdPlan<T> {
    /// The sizes the plan was made for.
    pub fn dims(&self) -> SsdCudaDims {
        self.dims
    }
    /// Total tokens T (`cu_seqlens[batch]`).
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// Sequences.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Chunks over all sequences.
    pub fn n_chunks(&self) -> usize {
        self.n_chunks
    }
}

impl Gpu {
    /// Checks a strided `[rows, width]` view: the stride covers the width, the last row ends
    /// inside the buffer, and the buffer lives on this device.
    fn check_cols<T: GpuDtype>(
        &self,
        op: &str,
        name: &str,
        m: &Cols<T>,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        if m.row_stride < width {
            return Err(bad(format!(
                "{op}: `{name}` row stride {} is less than its width {width}",
                m.row_stride
            )));
        }
        if m.row_stride > i64::MAX as usize / 2 {
            return Err(bad(format!(
                "{op}: `{name}` row stride {} is too large",
                m.row_stride
            )));
        }
        let need = (rows - 1)
            .checked_mul(m.row_stride)
            .and_then(|v| v.checked_add(width))
            .and_then(|v| v.checked_add(m.offset))
            .ok_or_else(|| bad(format!("{op}: `{name}` extent overflows")))?;
        if m.buf.len() < need {
            return Err(bad(format!(
                "{op}: `{name}` [rows={rows}, width={width}] at offset {} with row stride {} \
                 needs {need} elements, the buffer has {}",
                m.offset,
                m.row_stride,
                m.buf.len()
            )));
        }
        // Same-context check through the length check of a whole-buffer view.
        self.check_buf(op, name, m.buf, &[("elements", m.buf.len())])
    }

    /// Checks an SSD call's inputs (`T` rows of x, dt, B, C views), parameter vectors `[H]`,
    /// `y [T, H, P]` and the f32 state `[slots, H, P, N]`; returns the number of slots.
    fn check_io<T: GpuDtype>(
        &self,
        op: &str,
        inp: &SsdCudaInputs<T>,
        (h, p, g, n): (usize, usize, usize, usize),
        t: usize,
        state: &CudaSlice<f32>,
        y: &CudaSlice<T>,
    ) -> Result<usize> {
        self.check_cols(op, "x", &inp.x, t, h * p)?;
        self.check_cols(op, "dt", &inp.dt, t, h)?;
        self.check_cols(op, "b", &inp.b, t, g * n)?;
        self.check_cols(op, "c", &inp.c, t, g * n)?;
        self.check_buf(op, "dt_bias", inp.dt_bias, &[("H", h)])?;
        self.check_buf(op, "a_log", inp.a_log, &[("H", h)])?;
        if let Some(d) = inp.d {
            self.check_buf(op, "d", d, &[("H", h)])?;
        }
        self.check_buf(op, "y", y, &[("T", t), ("H", h), ("P", p)])?;
        let per_slot = h * p * n;
        if state.is_empty() || state.len() % per_slot != 0 {
            return Err(bad(format!(
                "{op}: `state` has {} elements, expected [slots, H={h}, P={p}, N={n}] \
                 (a multiple of {per_slot})",
                state.len()
            )));
        }
        let n_slots = state.len() / per_slot;
        self.check_buf(
            op,
            "state",
            state,
            &[("slots", n_slots), ("H*P*N", per_slot)],
        )?;
        Ok(n_slots)
    }

    /// Mamba-2 SSD chunked prefill (mamba's `mamba_chunk_scan_combined`, HF
    /// `mamba2_chunk_scan`) over a packed varlen batch; the result equals
    /// [`crate::cpu::ssd::ssd_chunked`] run on each sequence. Asynchronous on [`Gpu::stream`].
    /// One-shot form of [`Gpu::ssd_plan`] + [`Gpu::ssd_chunked_planned`] (it uploads the chunk
    /// table and allocates scratch on every call).
    ///
    /// - `cu_seqlens [batch + 1]`: sequence `s` is tokens `cu_seqlens[s] .. cu_seqlens[s+1]` of
    ///   the packed inputs (`cu_seqlens[0] == 0`, non-decreasing; an empty sequence just
    ///   passes its state through). `T = cu_seqlens[batch]`.
    /// - inputs (see [`SsdCudaInputs`]): `x [T, H*P]`, `dt [T, H]`, `b, c [T, G*N]` (strided
    ///   views), `dt_bias, a_log, d [H]`.
    /// - `state`: f32 `[slots, H, P, N]`. Sequence `s` uses slot `slots[s]` (or `s` when
    ///   `slots` is `None`; slots must be distinct): its initial state is read from there when
    ///   `has_initial_state` (zeros otherwise) and its final state is written there.
    /// - `y`: `[T, H, P]` output (dense), every element written.
    ///
    /// Supported: P in {64, 128}, N in {64, 128, 256}, chunk_size in {64, 128, 256}; anything
    /// else is an [`Error::InvalidInput`]. bf16/f16 matrix products run on tensor cores with
    /// operands rounded to `T` (as Triton does) and f32 accumulation; f32 runs exact f32.
    /// Each chunk's own state and the state handed to its scan are stored in `T` (Triton hands
    /// states on in C's dtype too), while the running and the final state are carried in f32.
    #[allow(clippy::too_many_arguments)]
    pub fn ssd_chunked<T: GpuDtype>(
        &self,
        inp: &SsdCudaInputs<T>,
        dims: SsdCudaDims,
        cu_seqlens: &[usize],
        slots: Option<&[i32]>,
        state: &mut CudaSlice<f32>,
        has_initial_state: bool,
        y: &mut CudaSlice<T>,
    ) -> Result<()> {
        let mut plan = self.ssd_plan::<T>(dims, cu_seqlens, slots)?;
        self.ssd_chunked_planned(&mut plan, inp, state, has_initial_state, y)
    }

    /// Prepares a varlen layout for [`Gpu::ssd_chunked_planned`]: validates `dims`,
    /// `cu_seqlens [batch + 1]` and `slots [batch]` (as [`Gpu::ssd_chunked`] documents; the
    /// slots' range is checked against the state buffer at each call), splits every sequence
    /// into chunks, uploads that table and allocates the scratch: chunk states
    /// `[n_chunks, H, P, N]` in `T`, chunk decays `[n_chunks, H]` and `C B^T`
    /// `[n_chunks, G, Q, Q]` in f32.
    pub fn ssd_plan<T: GpuDtype>(
        &self,
        dims: SsdCudaDims,
        cu_seqlens: &[usize],
        slots: Option<&[i32]>,
    ) -> Result<SsdPlan<T>> {
        const OP: &str = "ssd_chunked";
        let SsdCudaDims {
            heads: h,
            head_dim: p,
            groups: g,
            state: n,
            chunk_size: q,
            dt_limit,
        } = dims;
        if ![64, 128].contains(&p) {
            return Err(bad(format!(
                "{OP}: head_dim P = {p} is not supported (64 or 128)"
            )));
        }
        if ![64, 128, 256].contains(&n) {
            return Err(bad(format!(
                "{OP}: state N = {n} is not supported (64, 128 or 256)"
            )));
        }
        if ![64, 128, 256].contains(&q) {
            return Err(bad(format!(
                "{OP}: chunk_size {q} is not supported (64, 128 or 256)"
            )));
        }
        let (batch, t) = check_layout(OP, h, g, dt_limit, cu_seqlens, slots)?;
        // The chunk table: every sequence split into chunks of q tokens, the last maybe shorter.
        let mut chunk_info: Vec<i32> = Vec::new();
        let mut seq_chunks: Vec<i32> = Vec::with_capacity(batch + 1);
        for w in cu_seqlens.windows(2) {
            seq_chunks.push((chunk_info.len() / 2) as i32);
            let mut s = w[0];
            while s < w[1] {
                let len = q.min(w[1] - s);
                chunk_info.push(s as i32);
                chunk_info.push(len as i32);
                s += len;
            }
        }
        let nc = chunk_info.len() / 2;
        seq_chunks.push(nc as i32);
        let per_slot = h * p * n;
        let s = &self.stream;
        let up = |v: &[i32], what: &str| {
            s.clone_htod(v)
                .map_err(|e| cuda_err(&format!("{OP}: uploading {what}"), e))
        };
        let chunk_info_d = up(&chunk_info, "the chunk table")?;
        let seq_chunks_d = up(&seq_chunks, "the chunk table")?;
        let slots_d = match slots {
            Some(sl) => Some(up(sl, "slots")?),
            None => None,
        };
        // SAFETY (all three): uninitialised scratch. Within each call chunk_cb writes every C B^T
        // tile that chunk_scan reads, and chunk_state writes every chunk state and decay before
        // state_pass and chunk_scan (later on the same stream) read them.
        let chunk_states = unsafe { s.alloc::<T>(nc * per_slot) }
            .map_err(|e| cuda_err(&format!("{OP}: allocating chunk states"), e))?;
        let cum_end = unsafe { s.alloc::<f32>(nc * h) }
            .map_err(|e| cuda_err(&format!("{OP}: allocating chunk decays"), e))?;
        let cb = unsafe { s.alloc::<f32>(nc * g * q * q) }
            .map_err(|e| cuda_err(&format!("{OP}: allocating C B^T"), e))?;
        Ok(SsdPlan {
            dims,
            batch,
            tokens: t,
            n_chunks: nc,
            slots: slots.map(<[i32]>::to_vec),
            chunk_info: chunk_info_d,
            seq_chunks: seq_chunks_d,
            slots_d,
            chunk_states,
            cum_end,
            cb,
        })
    }

    /// [`Gpu::ssd_chunked`] with a prepared [`SsdPlan`] (made by this `Gpu`): the inputs, `state`
    /// and `y` are as documented there, with `T = plan.tokens()` and the plan's dims.
    pub fn ssd_chunked_planned<T: GpuDtype>(
        &self,
        plan: &mut SsdPlan<T>,
        inp: &SsdCudaInputs<T>,
        state: &mut CudaSlice<f32>,
        has_initial_state: bool,
        y: &mut CudaSlice<T>,
    ) -> Result<()> {
        const OP: &str = "ssd_chunked";
        let SsdCudaDims {
            heads: h,
            head_dim: p,
            groups: g,
            state: n,
            chunk_size: q,
            dt_limit: (lo, hi),
        } = plan.dims;
        let (t, batch, nc) = (plan.tokens, plan.batch, plan.n_chunks);
        self.check_buf(OP, "plan", &plan.chunk_info, &[("chunks", nc), ("2", 2)])?;
        let n_slots = self.check_io(OP, inp, (h, p, g, n), t, state, y)?;
        let needed = match &plan.slots {
            Some(sl) => sl.iter().map(|&s| s as usize + 1).max().unwrap_or(0),
            None => batch,
        };
        if n_slots < needed {
            return Err(bad(format!(
                "{OP}: `state` has {n_slots} slots, the batch's slots need {needed}"
            )));
        }

        // Per-dtype kernels; f32 runs the scalar tile code, one 64-column slice of P per block.
        // FH1_SSD_LEGACY=1 picks the first forms (unpadded tiles, the 4-warp scan), kept to
        // bisect a regression on the GPU; the default is the padded, 8-warp, two-stage form.
        let legacy = ssd_legacy();
        let v = if legacy { "" } else { "2" };
        let pt = if T::SUFFIX == "f32" { 64 } else { p };
        let f_cb = self.function(&format!("ssd_chunk_cb{v}_{}", T::SUFFIX))?;
        // Chunk states: by default the third form (one 8-warp block per chunk, head and 64 rows of
        // P over all of N, tokens streamed through three stages); FH1_SSD_STATE=2 picks the
        // second (one 4-warp block per 64 x 64 tile), FH1_SSD_LEGACY=1 the first.
        let state3 = !legacy && !ssd_state2();
        let state_name = if state3 {
            format!("ssd_chunk_state3_{}_n{n}", T::SUFFIX)
        } else {
            format!("ssd_chunk_state{v}_{}", T::SUFFIX)
        };
        let f_state = self.function(&state_name)?;
        let (state_threads, state_smem, state_tiles) = if state3 {
            let smem = state3_smem_bytes(n, std::mem::size_of::<T>());
            f_state
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(|e| {
                    cuda_err(
                        &format!(
                            "{OP}: raising {state_name}'s dynamic shared memory to {smem} bytes"
                        ),
                        e,
                    )
                })?;
            (256, smem, p / 64)
        } else {
            (128, 0, (p / 64) * (n / 64))
        };
        let f_pass = self.function(&format!("ssd_state_pass_{}", T::SUFFIX))?;
        let scan_name = format!("ssd_chunk_scan{v}_{}_p{pt}", T::SUFFIX);
        let f_scan = self.function(&scan_name)?;
        let (scan_threads, scan_smem) = if legacy {
            (128, 0)
        } else {
            let smem = scan2_smem_bytes(pt, std::mem::size_of::<T>());
            f_scan
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(|e| {
                    cuda_err(
                        &format!(
                            "{OP}: raising {scan_name}'s dynamic shared memory to {smem} bytes"
                        ),
                        e,
                    )
                })?;
            (256, smem)
        };

        let s = &self.stream;
        let (ip, _guards) = input_ptrs(inp, s);
        let (yp, _g8) = y.device_ptr_mut(s);
        let (stp, _g9) = state.device_ptr_mut(s);
        let (csp, _g10) = plan.chunk_states.device_ptr_mut(s);
        let (cump, _g11) = plan.cum_end.device_ptr_mut(s);
        let (cbp, _g15) = plan.cb.device_ptr_mut(s);
        let (infop, _g12) = plan.chunk_info.device_ptr(s);
        let (seqp, _g13) = plan.seq_chunks.device_ptr(s);
        let (slp, _g14) = match &plan.slots_d {
            Some(d) => {
                let (v, g) = d.device_ptr(s);
                (v as usize as *const c_void, Some(g))
            }
            None => (std::ptr::null(), None),
        };
        // 16-byte tile loads need every row start of x, b and c 16-byte aligned (the column
        // offsets inside a row, h*P, g*N and the tile starts, are multiples of 16 bytes).
        // (The addresses below already include each view's offset.)
        let es = std::mem::size_of::<T>();
        let aligned =
            |at: *const c_void, m: &Cols<T>| at as usize % 16 == 0 && (m.row_stride * es) % 16 == 0;
        let vec_loads = aligned(ip.x, &inp.x) && aligned(ip.b, &inp.b) && aligned(ip.c, &inp.c);
        let params = SsdParams {
            x: ip.x,
            dt: ip.dt,
            dt_bias: ip.dt_bias,
            a_log: ip.a_log,
            b: ip.b,
            c: ip.c,
            d: ip.d,
            y: yp as usize as *mut c_void,
            state: stp as usize as *mut c_void,
            chunk_states: csp as usize as *mut c_void,
            chunk_cum_end: cump as usize as *mut c_void,
            cb: cbp as usize as *mut c_void,
            chunk_info: infop as usize as *const c_void,
            seq_chunks: seqp as usize as *const c_void,
            slots: slp,
            n_chunks: nc as i64,
            batch: batch as i64,
            heads: h as i64,
            head_dim: p as i64,
            groups: g as i64,
            state_dim: n as i64,
            chunk_size: q as i64,
            x_row_stride: inp.x.row_stride as i64,
            dt_row_stride: inp.dt.row_stride as i64,
            b_row_stride: inp.b.row_stride as i64,
            c_row_stride: inp.c.row_stride as i64,
            y_row_stride: (h * p) as i64,
            has_initial_state: has_initial_state as i32,
            vec_loads: vec_loads as i32,
            dt_lo: lo,
            dt_hi: hi,
        };
        let cfg_cb = LaunchConfig {
            grid_dim: (nc as u32, g as u32, ((q / 64) * (q / 64)) as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let cfg_state = LaunchConfig {
            grid_dim: (nc as u32, h as u32, state_tiles as u32),
            block_dim: (state_threads, 1, 1),
            shared_mem_bytes: state_smem,
        };
        let cfg_pass = LaunchConfig {
            // One thread per 16 bytes of chunk state.
            grid_dim: (
                (p * n / (16 / std::mem::size_of::<T>())).div_ceil(256) as u32,
                h as u32,
                batch as u32,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let cfg_scan = LaunchConfig {
            grid_dim: ((nc * (q / 64)) as u32, h as u32, (p / pt) as u32),
            block_dim: (scan_threads, 1, 1),
            shared_mem_bytes: scan_smem,
        };
        // SAFETY: every buffer's extent was checked above against what the kernels index: x, dt,
        // b, c read rows 0..T of their strided views (T = cu_seqlens[batch], and every chunk in
        // the table lies inside one sequence); dt_bias, a_log, d read H elements; y is written
        // at [T, H, P]; state at the checked, distinct slots [.., H, P, N]; the scratch buffers
        // have n_chunks * H * P * N, n_chunks * H and n_chunks * G * Q * Q elements (cb is
        // indexed by chunk, group and in-chunk positions < Q) and the tables n_chunks * 2 and
        // batch + 1 (+ batch slots) entries. The only buffers written are y, state and the
        // scratch, all distinct (`&mut` borrows or fresh allocations), and the four launches
        // are ordered on one stream. The guards live until after the launches are enqueued.
        unsafe {
            s.launch_builder(&f_cb)
                .arg(&params)
                .launch(cfg_cb)
                .map_err(|e| cuda_err("launching ssd_chunk_cb", e))?;
            s.launch_builder(&f_state)
                .arg(&params)
                .launch(cfg_state)
                .map_err(|e| cuda_err("launching ssd_chunk_state", e))?;
            s.launch_builder(&f_pass)
                .arg(&params)
                .launch(cfg_pass)
                .map_err(|e| cuda_err("launching ssd_state_pass", e))?;
            s.launch_builder(&f_scan)
                .arg(&params)
                .launch(cfg_scan)
                .map_err(|e| cuda_err("launching ssd_chunk_scan", e))?;
        }
        Ok(())
    }
}

/// `FH1_SSD_LEGACY=1` in the environment: the launcher runs the first forms of the kernels.
fn ssd_legacy() -> bool {
    std::env::var_os("FH1_SSD_LEGACY").is_some_and(|v| v == "1")
}

/// `FH1_SSD_STATE=2` in the environment: the launcher runs the second form of the chunk-state
/// kernel (`ssd_chunk_state2_*`, one block per 64 x 64 tile) instead of the third.
fn ssd_state2() -> bool {
    std::env::var_os("FH1_SSD_STATE").is_some_and(|v| v == "2")
}

/// Dynamic shared memory of `ssd_chunk_state3_*_n{n}` (kernels/ssd.cu `State3::kBytes`): three
/// stages of an x tile `[kt][64 + pad]` and a B tile `[kt][n + pad]` in the element type (kt = 32
/// tokens for 16-bit types, 16 for f32; pad = 16 bytes), or for 16-bit types the output tile
/// `[64][n + pad]`, whichever is larger.
fn state3_smem_bytes(n: usize, elem: usize) -> u32 {
    let (kt, pad) = (if elem == 4 { 16 } else { 32 }, 16 / elem);
    let stages = 3 * kt * (64 + pad + n + pad) * elem;
    let out = if elem == 4 { 0 } else { 64 * (n + pad) * elem };
    stages.max(out) as u32
}

/// Dynamic shared memory of `ssd_chunk_scan2_*_p{pt}` (kernels/ssd.cu `Scan2::kBytes`): two
/// stages of a C tile `[64][72]` and an S tile `[pt][72]` in the element type, or the f32
/// output tile `[64][pt + 4]`, whichever is larger.
fn scan2_smem_bytes(pt: usize, elem: usize) -> u32 {
    let stages = 2 * (64 + pt) * 72 * elem;
    let out = 64 * (pt + 4) * 4;
    stages.max(out) as u32
}

/// Largest `P * N` of [`Gpu::ssd_scan_reference`] (its state lives in 48 KB of shared memory).
pub const SSD_REF_MAX_STATE: usize = 8192;

impl Gpu {
    /// The SSD as the plain recurrence, one token at a time (kernels/ssd_ref.cu): the same
    /// inputs, state and output contract as [`Gpu::ssd_chunked`] (sequence `s` of `cu_seqlens`
    /// continues from slot `slots[s]`'s state when `has_initial_state` and leaves its final
    /// state there) for any `P` and `N` with `P * N <= SSD_REF_MAX_STATE` and any chunk size
    /// (unused). It is the path for sizes the chunked kernels are not built for (the tiny test
    /// models); one block per (head, sequence) walks the tokens in order, so at the model sizes
    /// it is far slower than [`Gpu::ssd_chunked`]. Uploads the sequence table on each call.
    #[allow(clippy::too_many_arguments)]
    pub fn ssd_scan_reference<T: GpuDtype>(
        &self,
        inp: &SsdCudaInputs<T>,
        dims: SsdCudaDims,
        cu_seqlens: &[usize],
        slots: &[i32],
        state: &mut CudaSlice<f32>,
        has_initial_state: bool,
        y: &mut CudaSlice<T>,
    ) -> Result<()> {
        const OP: &str = "ssd_scan_reference";
        let SsdCudaDims {
            heads: h,
            head_dim: p,
            groups: g,
            state: n,
            dt_limit: (lo, hi),
            ..
        } = dims;
        if p == 0 || n == 0 || !matches!(p.checked_mul(n), Some(s) if s <= SSD_REF_MAX_STATE) {
            return Err(bad(format!(
                "{OP}: P*N = {p}*{n} must be 1 to {SSD_REF_MAX_STATE}"
            )));
        }
        let (batch, t) = check_layout(OP, h, g, (lo, hi), cu_seqlens, Some(slots))?;
        let n_slots = self.check_io(OP, inp, (h, p, g, n), t, state, y)?;
        if let Some(&s) = slots.iter().find(|&&s| s as usize >= n_slots) {
            return Err(bad(format!(
                "{OP}: slot {s} is outside the state's {n_slots} slots"
            )));
        }
        let info: Vec<i32> = (0..batch)
            .flat_map(|s| {
                [
                    cu_seqlens[s] as i32,
                    (cu_seqlens[s + 1] - cu_seqlens[s]) as i32,
                ]
            })
            .collect();
        let info = self.upload(&info)?;
        let slots_d = self.upload(slots)?;
        let f = self.function(&format!("ssd_scan_ref_{}", T::SUFFIX))?;
        let cfg = LaunchConfig {
            grid_dim: (h as u32, batch as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: ((p * n + 2 * n + p) * 4) as u32,
        };
        let s = &self.stream;
        let (ip, _guards) = input_ptrs(inp, s);
        let (yp, _g8) = y.device_ptr_mut(s);
        let (stp, _g9) = state.device_ptr_mut(s);
        let (infop, _g10) = info.device_ptr(s);
        let (slp, _g11) = slots_d.device_ptr(s);
        let params = SsdParams {
            x: ip.x,
            dt: ip.dt,
            dt_bias: ip.dt_bias,
            a_log: ip.a_log,
            b: ip.b,
            c: ip.c,
            d: ip.d,
            y: yp as usize as *mut c_void,
            state: stp as usize as *mut c_void,
            chunk_states: std::ptr::null_mut(),
            chunk_cum_end: std::ptr::null_mut(),
            cb: std::ptr::null_mut(),
            chunk_info: infop as usize as *const c_void,
            seq_chunks: std::ptr::null(),
            slots: slp as usize as *const c_void,
            n_chunks: batch as i64,
            batch: batch as i64,
            heads: h as i64,
            head_dim: p as i64,
            groups: g as i64,
            state_dim: n as i64,
            chunk_size: 0,
            x_row_stride: inp.x.row_stride as i64,
            dt_row_stride: inp.dt.row_stride as i64,
            b_row_stride: inp.b.row_stride as i64,
            c_row_stride: inp.c.row_stride as i64,
            y_row_stride: (h * p) as i64,
            has_initial_state: has_initial_state as i32,
            vec_loads: 0,
            dt_lo: lo,
            dt_hi: hi,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&params);
        // SAFETY: every view was checked to hold T rows of its width (x, dt, b, c), y is exactly
        // [T, H*P], the parameter vectors [H]; the sequence table describes rows 0..T
        // (non-decreasing cu_seqlens ending at T), the slots are distinct and inside `state`, so
        // each block reads and writes only its own (slot, head) state. `y` and `state` are `&mut`
        // borrows distinct from the inputs. `info` and `slots_d` and every guard live until the
        // launch is enqueued (and the uploads are ordered before it on the same stream).
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err(&format!("launching {OP}"), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures of kernels/ssd.cu `State3::kBytes` (static_assert there).
    #[test]
    fn state3_smem_matches_the_kernel() {
        assert_eq!(state3_smem_bytes(256, 2), 64512);
        assert_eq!(state3_smem_bytes(128, 2), 39936);
        assert_eq!(state3_smem_bytes(64, 2), 27648);
        assert_eq!(state3_smem_bytes(256, 4), 62976);
        assert_eq!(state3_smem_bytes(128, 4), 38400);
        assert_eq!(state3_smem_bytes(64, 4), 26112);
    }
}
