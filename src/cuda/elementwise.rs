//! Small fused elementwise ops on the GPU: embedding gather, residual add, SwiGLU, row gather and
//! strided copy (kernels/elementwise.cu, one `ElementwiseParams` for the family).
//!
//! Every kernel moves 16-byte packs where the width, every row stride and every address allow it
//! and single elements otherwise (decided on the device, uniformly per launch), in a grid-stride
//! loop over int64 indices; arithmetic is in f32, rounded to `T` once.

use super::conv1d::{elem_ptr, Strided};
use super::params::ElementwiseParams;
use super::{cuda_err, Gpu, GpuDtype};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::ffi::c_void;

// SAFETY: a plain C struct of pointers and integers, passed by value as the kernel argument.
unsafe impl cudarc::driver::DeviceRepr for ElementwiseParams {}

/// Threads per block (the kernels' launch bound).
const THREADS: usize = 256;
/// Blocks at most: 16M threads, enough to fill any card; the grid-stride loop covers the rest.
const MAX_BLOCKS: usize = 1 << 16;

impl Gpu {
    /// Token embedding gather: `out [ids.len(), dim]`, row `r` = `table [vocab, dim]` row
    /// `ids[r]` (int32 on the device). An id outside `[0, vocab)` writes a row of zeros: the ids
    /// live on the device and are not read here, so the caller validates them (the CPU
    /// [`crate::cpu::embedding`] rejects them). No multiplier: fold it into the table.
    /// Asynchronous on [`Gpu::stream`].
    pub fn embedding_into<T: GpuDtype>(
        &self,
        table: &CudaSlice<T>,
        ids: &CudaSlice<i32>,
        out: &mut CudaSlice<T>,
        vocab: usize,
        dim: usize,
    ) -> Result<()> {
        const OP: &str = "embedding";
        let rows = ids.len();
        if rows == 0 || vocab == 0 || dim == 0 {
            return Err(Error::invalid(format!(
                "{OP}: empty input: ids [T={rows}], table [vocab={vocab}, dim={dim}]"
            )));
        }
        self.check_buf(OP, "table", table, &[("vocab", vocab), ("dim", dim)])?;
        self.check_buf(OP, "ids", ids, &[("T", rows)])?;
        self.check_buf(OP, "out", out, &[("T", rows), ("dim", dim)])?;
        let s = &self.stream;
        let (tp, _gt) = table.device_ptr(s);
        let (ip, _gi) = ids.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let p = ElementwiseParams {
            out: op as usize as *mut c_void,
            x: elem_ptr::<T>(tp, 0),
            y: std::ptr::null(),
            idx: ip as usize as *const i32,
            rows: rows as i64,
            cols: dim as i64,
            out_row_stride: dim as i64,
            x_row_stride: dim as i64,
            y_row_stride: 0,
            vocab: vocab as i64,
        };
        // SAFETY: the kernel reads ids [T] and only rows of table in [0, vocab) (ids are
        // range-checked on the device), and writes out [T, dim]; every length was checked above.
        // `out` is a `&mut` borrow, so it aliases no input; the guards live past the launch.
        unsafe { self.launch_elementwise::<T>("embedding", &p, false) }
    }

    /// Residual add in place: `x [rows, cols] += y [rows, cols]`, summed in f32 and rounded to
    /// `T`. `x` is dense; `y` a strided view. Asynchronous on [`Gpu::stream`].
    pub fn add_into<T: GpuDtype>(
        &self,
        x: &mut CudaSlice<T>,
        y: Strided<'_, T>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        const OP: &str = "add";
        check_nonempty(OP, rows, cols)?;
        self.check_buf(OP, "x", x, &[("rows", rows), ("cols", cols)])?;
        self.check_strided(OP, "y", &y, rows, cols)?;
        let s = &self.stream;
        let (yp, _gy) = y.buf.device_ptr(s);
        let (xp, _gx) = x.device_ptr_mut(s);
        let p = ElementwiseParams {
            out: xp as usize as *mut c_void,
            x: xp as usize as *const c_void,
            y: elem_ptr::<T>(yp, y.offset),
            idx: std::ptr::null(),
            rows: rows as i64,
            cols: cols as i64,
            out_row_stride: cols as i64,
            x_row_stride: cols as i64,
            y_row_stride: y.row_stride as i64,
            vocab: 0,
        };
        // SAFETY: reads and writes x [rows, cols] (checked), each element read and then written
        // by the same thread; reads y inside its checked view. `x` is a `&mut` borrow, so y
        // cannot be in the same buffer; the guards live past the launch.
        unsafe { self.launch_elementwise::<T>("add", &p, true) }
    }

    /// SwiGLU: `out [rows, cols] = up * silu(gate)` (computed in f32, rounded to `T` once), with
    /// `gate` and `up` strided views (often column blocks of one fused gate/up projection) and
    /// `out` dense. Asynchronous on [`Gpu::stream`].
    pub fn swiglu_into<T: GpuDtype>(
        &self,
        gate: Strided<'_, T>,
        up: Strided<'_, T>,
        out: &mut CudaSlice<T>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        const OP: &str = "swiglu";
        check_nonempty(OP, rows, cols)?;
        self.check_strided(OP, "gate", &gate, rows, cols)?;
        self.check_strided(OP, "up", &up, rows, cols)?;
        self.check_buf(OP, "out", out, &[("rows", rows), ("cols", cols)])?;
        let s = &self.stream;
        let (gp, _gg) = gate.buf.device_ptr(s);
        let (up_p, _gu) = up.buf.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let p = ElementwiseParams {
            out: op as usize as *mut c_void,
            x: elem_ptr::<T>(gp, gate.offset),
            y: elem_ptr::<T>(up_p, up.offset),
            idx: std::ptr::null(),
            rows: rows as i64,
            cols: cols as i64,
            out_row_stride: cols as i64,
            x_row_stride: gate.row_stride as i64,
            y_row_stride: up.row_stride as i64,
            vocab: 0,
        };
        // SAFETY: reads gate and up inside their checked views, writes out [rows, cols]
        // (checked); `out` is a `&mut` borrow, so it aliases neither; guards live past the launch.
        unsafe { self.launch_elementwise::<T>("swiglu", &p, true) }
    }

    /// Row gather: `out [idx.len(), cols]`, row `i` = row `idx[i]` of the strided view `x` (int32
    /// indices on the device). The rows `x` has are those its buffer holds completely from the
    /// view's offset; the indices are checked on the device: an index outside them writes a row
    /// of zeros. Asynchronous on [`Gpu::stream`].
    pub fn gather_rows_into<T: GpuDtype>(
        &self,
        x: Strided<'_, T>,
        idx: &CudaSlice<i32>,
        out: &mut CudaSlice<T>,
        cols: usize,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        let rows = idx.len();
        check_nonempty(OP, rows, cols)?;
        // Rows of x: every r with offset + r*row_stride + cols <= len.
        let x_rows = x
            .buf
            .len()
            .checked_sub(x.offset)
            .and_then(|n| n.checked_sub(cols))
            .filter(|_| x.row_stride >= cols)
            .map(|n| n / x.row_stride + 1)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{OP}: `x` has {} elements: no row of {cols} at offset {} with row stride {} \
                     (the stride must be at least the width)",
                    x.buf.len(),
                    x.offset,
                    x.row_stride
                ))
            })?;
        self.check_strided(OP, "x", &x, x_rows, cols)?;
        self.check_buf(OP, "idx", idx, &[("rows", rows)])?;
        self.check_buf(OP, "out", out, &[("rows", rows), ("cols", cols)])?;
        let s = &self.stream;
        let (xp, _gx) = x.buf.device_ptr(s);
        let (ip, _gi) = idx.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let p = ElementwiseParams {
            out: op as usize as *mut c_void,
            x: elem_ptr::<T>(xp, x.offset),
            y: std::ptr::null(),
            idx: ip as usize as *const i32,
            rows: rows as i64,
            cols: cols as i64,
            out_row_stride: cols as i64,
            x_row_stride: x.row_stride as i64,
            y_row_stride: 0,
            vocab: x_rows as i64,
        };
        // SAFETY: reads idx [rows] and only rows of x in [0, x_rows) (range-checked on the
        // device; x_rows rows fit in x's buffer, checked above); writes out [rows, cols]
        // (checked); `out` is a `&mut` borrow; guards live past the launch.
        unsafe { self.launch_elementwise::<T>("gather_rows", &p, false) }
    }

    /// Copies the strided view `x [rows, cols]` into the dense `out [rows, cols]`. Asynchronous
    /// on [`Gpu::stream`].
    pub fn copy_into<T: GpuDtype>(
        &self,
        x: Strided<'_, T>,
        out: &mut CudaSlice<T>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        const OP: &str = "copy";
        check_nonempty(OP, rows, cols)?;
        self.check_strided(OP, "x", &x, rows, cols)?;
        self.check_buf(OP, "out", out, &[("rows", rows), ("cols", cols)])?;
        let s = &self.stream;
        let (xp, _gx) = x.buf.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let p = ElementwiseParams {
            out: op as usize as *mut c_void,
            x: elem_ptr::<T>(xp, x.offset),
            y: std::ptr::null(),
            idx: std::ptr::null(),
            rows: rows as i64,
            cols: cols as i64,
            out_row_stride: cols as i64,
            x_row_stride: x.row_stride as i64,
            y_row_stride: 0,
            vocab: 0,
        };
        // SAFETY: reads x inside its checked view, writes out [rows, cols] (checked); `out` is a
        // `&mut` borrow; guards live past the launch.
        unsafe { self.launch_elementwise::<T>("copy", &p, false) }
    }

    /// Greedy choice per row: `out [rows]` (int32) = the column of the largest value of row `r`
    /// of `x [rows, cols]` (a strided view), the first one on ties like `torch.argmax`; NaN
    /// never wins (a row of NaN gives 0). One block per row. Asynchronous on [`Gpu::stream`].
    pub fn argmax_rows_into<T: GpuDtype>(
        &self,
        x: Strided<'_, T>,
        out: &mut CudaSlice<i32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        const OP: &str = "argmax_rows";
        check_nonempty(OP, rows, cols)?;
        if cols > i32::MAX as usize {
            return Err(Error::invalid(format!(
                "{OP}: {cols} columns do not fit an int32 index"
            )));
        }
        self.check_strided(OP, "x", &x, rows, cols)?;
        self.check_buf(OP, "out", out, &[("rows", rows)])?;
        let f = self.function(&format!("argmax_rows_{}", T::SUFFIX))?;
        let s = &self.stream;
        let (xp, _gx) = x.buf.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let p = ElementwiseParams {
            out: op as usize as *mut c_void,
            x: elem_ptr::<T>(xp, x.offset),
            y: std::ptr::null(),
            idx: std::ptr::null(),
            rows: rows as i64,
            cols: cols as i64,
            out_row_stride: 1,
            x_row_stride: x.row_stride as i64,
            y_row_stride: 0,
            vocab: 0,
        };
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&p);
        // SAFETY: block r reads row r of x ([rows, cols] at its stride, checked above) and
        // writes out[r] (out holds rows ints, checked); `out` is a `&mut` borrow, so it aliases
        // nothing; the guards live past the launch.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err(&format!("launching {OP}"), e))?;
        Ok(())
    }

    /// Launches `{op}_{T}` on `p` over a grid sized for the kernel's choice of packs.
    ///
    /// # Safety
    /// Every pointer in `p` must address what the kernel reads and writes for `p`'s sizes (see
    /// kernels/params_elementwise.h), on this `Gpu`'s device, with the buffers' guards alive
    /// until this returns; `uses_y` says whether the op reads `p.y`.
    unsafe fn launch_elementwise<T: GpuDtype>(
        &self,
        op: &str,
        p: &ElementwiseParams,
        uses_y: bool,
    ) -> Result<()> {
        let f = self.function(&format!("{op}_{}", T::SUFFIX))?;
        // Mirrors the kernel's choice (can_vectorize in elementwise.cu); it only sizes the grid.
        let v = (16 / std::mem::size_of::<T>()) as i64;
        let a16 = |ptr: *const c_void| (ptr as usize) % 16 == 0;
        let vec = p.cols % v == 0
            && p.out_row_stride % v == 0
            && a16(p.out as *const c_void)
            && p.x_row_stride % v == 0
            && a16(p.x)
            && (!uses_y || (p.y_row_stride % v == 0 && a16(p.y)));
        let items = (p.rows as usize) * (p.cols as usize) / if vec { v as usize } else { 1 };
        let cfg = LaunchConfig {
            grid_dim: (items.div_ceil(THREADS).clamp(1, MAX_BLOCKS) as u32, 1, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(p);
        // SAFETY: the caller's contract: every access of the kernel is in bounds and alive.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err(&format!("launching {op}"), e))?;
        Ok(())
    }
}

fn check_nonempty(op: &str, rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(Error::invalid(format!(
            "{op}: empty input [rows={rows}, cols={cols}]"
        )));
    }
    Ok(())
}
