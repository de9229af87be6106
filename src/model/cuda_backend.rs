//! The CUDA backend: activations and weights on one GPU in the model dtype `T` (bf16 by
//! default, f16 or f32 on request), the SSM state in f32, every op a kernel of `kernels/` or a
//! cuBLASLt GEMM, all on the [`Gpu`]'s one stream.
//!
//! Tensors are views (`offset`, `row_stride`) of reference-counted device buffers, so that
//! splitting the input projection into z / xBC / dt, or xBC into x / B / C, copies nothing: the
//! kernels read strided column blocks. Every buffer a step needs comes from [`CudaBackend`]'s
//! allocator, which can record the allocations of one step and hand the very same buffers out
//! again in the same order: that is what lets a decode step be captured once as a CUDA graph
//! and replayed (see [`super::cuda_graph`]).

use super::backend::{AttnShape, Backend, MambaParams, SsdShape, StateKind};
use super::batch::SeqBatch;
use crate::cuda::attention::{AttnBatch, AttnDtype, DecodeScratch, GpuKvCache};
use crate::cuda::conv1d::{Conv1dDims, Strided};
use crate::cuda::gemm::GemmDtype;
use crate::cuda::ssd::{SsdCudaDims, SsdCudaInputs, SsdPlan};
use crate::cuda::ssm_update::{SsmUpdateCudaDims, SsmUpdateInputs};
use crate::cuda::{CudaSlice, Gpu, GpuDtype};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// The element types the model runs in on the GPU.
pub trait ModelDtype: AttnDtype + GemmDtype {
    /// The name users type (`--dtype bf16`).
    const NAME: &'static str;
}
impl ModelDtype for half::bf16 {
    const NAME: &'static str = "bf16";
}
impl ModelDtype for half::f16 {
    const NAME: &'static str = "f16";
}
impl ModelDtype for f32 {
    const NAME: &'static str = "f32";
}

/// A weight on the device: the buffer and its shape (`[out, in]` matrices, 1-D vectors).
pub struct CudaWeight<T: GpuDtype> {
    buf: CudaSlice<T>,
    shape: Vec<usize>,
}

impl<T: GpuDtype> CudaWeight<T> {
    /// The weight's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The device buffer.
    pub fn buf(&self) -> &CudaSlice<T> {
        &self.buf
    }
}

/// Where freed step buffers go while a graph's allocations are being recorded or replayed.
pub(crate) struct Arena<T: GpuDtype> {
    /// Buffer `i` is the step's `i`-th allocation; `None` while a tensor holds it.
    bufs: Vec<Option<CudaSlice<T>>>,
    /// The next allocation's index when replaying.
    next: usize,
    recording: bool,
}

/// A device buffer that, when it belongs to an arena, goes back there instead of being freed.
struct PoolBuf<T: GpuDtype> {
    slice: Option<CudaSlice<T>>,
    home: Option<(Rc<RefCell<Arena<T>>>, usize)>,
}

impl<T: GpuDtype> Drop for PoolBuf<T> {
    fn drop(&mut self) {
        if let (Some((arena, i)), Some(s)) = (self.home.take(), self.slice.take()) {
            arena.borrow_mut().bufs[i] = Some(s);
        }
    }
}

/// An activation `[rows, cols]`: row `r` starts at element `offset + r * row_stride` of a shared
/// device buffer.
pub struct CudaTensor<T: GpuDtype> {
    buf: Rc<PoolBuf<T>>,
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<T: GpuDtype> Clone for CudaTensor<T> {
    fn clone(&self) -> Self {
        Self {
            buf: self.buf.clone(),
            offset: self.offset,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
        }
    }
}

impl<T: GpuDtype> CudaTensor<T> {
    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    fn slice(&self) -> &CudaSlice<T> {
        self.buf
            .slice
            .as_ref()
            .expect("a live tensor holds its buffer")
    }

    /// The tensor as the strided view the launchers take.
    pub(crate) fn view(&self) -> Strided<'_, T> {
        Strided {
            buf: self.slice(),
            offset: self.offset,
            row_stride: self.row_stride,
        }
    }

    /// The whole buffer, when the tensor is exactly it (dense, offset 0).
    fn dense(&self) -> Option<&CudaSlice<T>> {
        let s = self.slice();
        (self.offset == 0 && self.row_stride == self.cols && s.len() == self.rows * self.cols)
            .then_some(s)
    }

    /// Mutable access to the whole buffer, when the tensor is dense and the only user.
    fn dense_mut(&mut self) -> Option<&mut CudaSlice<T>> {
        let (rows, cols) = (self.rows, self.cols);
        if self.offset != 0 || self.row_stride != cols {
            return None;
        }
        let s = Rc::get_mut(&mut self.buf)?.slice.as_mut()?;
        (s.len() == rows * cols).then_some(s)
    }
}

/// One layer's KV cache on the GPU (layout in [`GpuKvCache`]).
pub struct CudaKvCache<T: ModelDtype> {
    cache: GpuKvCache<T>,
    shape: AttnShape,
}

impl<T: ModelDtype> CudaKvCache<T> {
    /// The device cache.
    pub fn inner(&self) -> &GpuKvCache<T> {
        &self.cache
    }
}

/// A per-slot state on the GPU: the conv state in `T`, the SSM state in f32.
pub enum CudaState<T: GpuDtype> {
    /// `[slots, C, K-1]`.
    Conv {
        /// The buffer.
        buf: CudaSlice<T>,
        /// Values per slot.
        width: usize,
    },
    /// `[slots, H, P, N]`, f32.
    Ssm {
        /// The buffer.
        buf: CudaSlice<f32>,
        /// Values per slot.
        width: usize,
    },
}

/// One forward's batch on the device: token ids, the packed layout (the attention batch's int32
/// cu_seqlens, starts and slots, which the conv and scan kernels read too), and, made at the
/// first Mamba layer, the
/// SSD's chunk table and scratch, which every layer reuses.
pub struct CudaBatch<T: ModelDtype> {
    pub(crate) seq: SeqBatch,
    pub(crate) ids: CudaSlice<i32>,
    /// The slots on the host, as int32.
    slots_host: Vec<i32>,
    pub(crate) attn: AttnBatch,
    pub(crate) cache_slots: usize,
    pub(crate) capacity: usize,
    ssd_plan: RefCell<Option<SsdPlan<T>>>,
}

impl<T: ModelDtype> CudaBatch<T> {
    /// Every sequence brings one token: the decode kernels run.
    pub fn is_decode(&self) -> bool {
        self.seq.lens.iter().all(|&l| l == 1)
    }
}

/// The CUDA backend over one [`Gpu`], in model dtype `T`.
pub struct CudaBackend<T: ModelDtype> {
    gpu: Arc<Gpu>,
    /// The second stream the attention branch runs on (made at the first branch).
    side: std::cell::OnceCell<Gpu>,
    /// Ops go to `side` while set (between `side_branch` and `main_branch`).
    on_side: std::cell::Cell<bool>,
    /// Whether the branches run on two streams (else everything goes to `gpu`'s stream).
    concurrent: std::cell::Cell<bool>,
    /// Set while a graph's step is being recorded or replayed.
    arena: RefCell<Option<Rc<RefCell<Arena<T>>>>>,
    /// RoPE inverse frequencies by (head_dim, theta bits).
    inv_freq: RefCell<HashMap<(usize, u64), CudaSlice<f32>>>,
    /// Split-KV decode scratch by (batch, Hq, hd, capacity); reused by every layer and step.
    decode_scratch: RefCell<HashMap<(usize, usize, usize, usize), DecodeScratch>>,
}

fn int32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(format!("{what} {v} does not fit in int32")))
}

impl<T: ModelDtype> CudaBackend<T> {
    /// A backend on `gpu`.
    pub fn new(gpu: Arc<Gpu>) -> Self {
        Self {
            gpu,
            side: std::cell::OnceCell::new(),
            on_side: std::cell::Cell::new(false),
            concurrent: std::cell::Cell::new(true),
            arena: RefCell::new(None),
            inv_freq: RefCell::new(HashMap::new()),
            decode_scratch: RefCell::new(HashMap::new()),
        }
    }

    /// Opens GPU `ordinal` (an error, never a panic, without one).
    pub fn open(ordinal: usize) -> Result<Self> {
        Ok(Self::new(Arc::new(Gpu::new(ordinal)?)))
    }

    /// The GPU (its main stream: where the Mamba branch, the MLP and everything outside a
    /// layer's attention branch run).
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Runs each layer's attention branch on a second stream beside the Mamba branch (the
    /// default), or everything on one stream.
    pub fn set_concurrent_branches(&self, on: bool) {
        self.concurrent.set(on);
    }

    /// Where the next op goes: the side stream inside an attention branch, the main one otherwise.
    fn g(&self) -> &Gpu {
        match (self.on_side.get(), self.side.get()) {
            (true, Some(side)) => side,
            _ => &self.gpu,
        }
    }

    /// Starts recording (`recording`) or replaying the allocations of one step into `arena`.
    pub(crate) fn set_arena(&self, arena: Option<Rc<RefCell<Arena<T>>>>) {
        *self.arena.borrow_mut() = arena;
    }

    pub(crate) fn new_arena(recording: bool) -> Rc<RefCell<Arena<T>>> {
        Rc::new(RefCell::new(Arena {
            bufs: Vec::new(),
            next: 0,
            recording,
        }))
    }

    pub(crate) fn arena_replay(arena: &Rc<RefCell<Arena<T>>>) {
        let mut a = arena.borrow_mut();
        a.recording = false;
        a.next = 0;
    }

    /// A new `[rows, cols]` activation (uninitialised: every op below writes all of it).
    fn alloc(&self, rows: usize, cols: usize, what: &str) -> Result<CudaTensor<T>> {
        let len = rows.checked_mul(cols).filter(|&n| n > 0).ok_or_else(|| {
            Error::invalid(format!(
                "{what}: empty or overflowing shape [{rows}, {cols}]"
            ))
        })?;
        let arena = self.arena.borrow().clone();
        let (slice, home) = match arena {
            None => (self.raw_alloc(len, what)?, None),
            Some(arena) => {
                let mut a = arena.borrow_mut();
                if a.recording {
                    let s = self.raw_alloc(len, what)?;
                    a.bufs.push(None);
                    let i = a.bufs.len() - 1;
                    drop(a);
                    (s, Some((arena.clone(), i)))
                } else {
                    let i = a.next;
                    a.next += 1;
                    let s = a.bufs.get_mut(i).and_then(Option::take).ok_or_else(|| {
                        Error::Cuda(format!(
                            "graph replay diverged from its recording at allocation {i} ({what})"
                        ))
                    })?;
                    if s.len() != len {
                        return Err(Error::Cuda(format!(
                            "graph replay diverged from its recording at allocation {i} ({what}: \
                             {len} elements, recorded {})",
                            s.len()
                        )));
                    }
                    drop(a);
                    (s, Some((arena.clone(), i)))
                }
            }
        };
        Ok(CudaTensor {
            buf: Rc::new(PoolBuf {
                slice: Some(slice),
                home,
            }),
            offset: 0,
            rows,
            cols,
            row_stride: cols,
        })
    }

    /// Allocates `len` elements; out of memory is an error that says how much was asked and
    /// how much is free.
    fn raw_alloc<U: GpuDtype>(&self, len: usize, what: &str) -> Result<CudaSlice<U>> {
        // SAFETY: uninitialised memory, written in full by the op it is made for before any read.
        unsafe { self.g().stream().alloc::<U>(len) }
            .map_err(|e| self.oom(len * size_of::<U>(), what, e))
    }

    fn zeros<U: GpuDtype>(&self, len: usize, what: &str) -> Result<CudaSlice<U>> {
        self.g()
            .stream()
            .alloc_zeros::<U>(len)
            .map_err(|e| self.oom(len * size_of::<U>(), what, e))
    }

    fn oom(&self, bytes: usize, what: &str, e: impl std::fmt::Debug) -> Error {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        match self.g().memory_info() {
            Ok((free, total)) => Error::Cuda(format!(
                "allocating {:.1} MiB for {what} on the GPU failed ({e:?}): {:.1} MiB free of {:.1} MiB",
                mib(bytes),
                mib(free),
                mib(total)
            )),
            Err(_) => Error::Cuda(format!(
                "allocating {:.1} MiB for {what} on the GPU failed ({e:?})",
                mib(bytes)
            )),
        }
    }

    /// A dense copy of `x` (or `x` itself when already dense).
    fn densify(&self, x: &CudaTensor<T>, what: &str) -> Result<CudaTensor<T>> {
        if x.dense().is_some() {
            return Ok(x.clone());
        }
        let mut out = self.alloc(x.rows, x.cols, what)?;
        let dst = out.dense_mut().expect("fresh buffer");
        self.g().copy_into(x.view(), dst, x.rows, x.cols)?;
        Ok(out)
    }

    /// Makes `x` dense and its buffer's only user (copying it when it is a view or shared), so
    /// that an in-place op cannot write through another tensor.
    fn make_unique(&self, x: &mut CudaTensor<T>, what: &str) -> Result<()> {
        if x.dense_mut().is_some() {
            return Ok(());
        }
        let mut fresh = self.alloc(x.rows, x.cols, what)?;
        let dst = fresh.dense_mut().expect("fresh buffer");
        self.g().copy_into(x.view(), dst, x.rows, x.cols)?;
        *x = fresh;
        Ok(())
    }

    fn inv_freq(&self, head_dim: usize, theta: f64) -> Result<()> {
        let key = (head_dim, theta.to_bits());
        if !self.inv_freq.borrow().contains_key(&key) {
            let f = self.g().rope_inv_freq(head_dim, theta)?;
            self.inv_freq.borrow_mut().insert(key, f);
        }
        Ok(())
    }

    fn check_rows(op: &str, t: &CudaTensor<T>, rows: usize, cols: usize) -> Result<()> {
        if t.rows != rows || t.cols != cols {
            return Err(Error::invalid(format!(
                "{op}: tensor is [{}, {}], expected [{rows}, {cols}]",
                t.rows, t.cols
            )));
        }
        Ok(())
    }
}

fn matrix_dims<T: GpuDtype>(w: &CudaWeight<T>, what: &str) -> Result<(usize, usize)> {
    match w.shape[..] {
        [o, i] => Ok((o, i)),
        _ => Err(Error::invalid(format!(
            "{what}: expected a matrix [out, in], found shape {:?}",
            w.shape
        ))),
    }
}

fn vector_len<T: GpuDtype>(w: &CudaWeight<T>, what: &str, want: usize) -> Result<()> {
    if w.shape != [want] {
        return Err(Error::invalid(format!(
            "{what}: expected shape [{want}], found {:?}",
            w.shape
        )));
    }
    Ok(())
}

impl<T: ModelDtype> Backend for CudaBackend<T> {
    type Tensor = CudaTensor<T>;
    type Weight = CudaWeight<T>;
    type KvCache = CudaKvCache<T>;
    type State = CudaState<T>;
    type Batch = CudaBatch<T>;

    fn name(&self) -> String {
        let dev = self.g().name().unwrap_or_else(|_| "?".into());
        format!("cuda:{} ({dev}, {})", self.g().ordinal(), T::NAME)
    }

    fn weight(&self, t: &HostTensor) -> Result<CudaWeight<T>> {
        let host: Vec<T> = t.data.iter().map(|&v| T::from_f32(v)).collect();
        let mut buf = self.raw_alloc::<T>(host.len().max(1), "a weight")?;
        if !host.is_empty() {
            self.g()
                .stream()
                .memcpy_htod(&host, &mut buf)
                .map_err(|e| Error::Cuda(format!("uploading a weight {:?}: {e:?}", t.shape)))?;
        }
        Ok(CudaWeight {
            buf,
            shape: t.shape.clone(),
        })
    }

    fn random_weight(&self, shape: &[usize], lo: f32, hi: f32, seed: u64) -> Result<CudaWeight<T>> {
        let n: usize = shape.iter().product();
        let mut buf = self.raw_alloc::<T>(n.max(1), &format!("a random weight {shape:?}"))?;
        self.g().fill_uniform(&mut buf, lo, hi, seed)?;
        Ok(CudaWeight {
            buf,
            shape: shape.to_vec(),
        })
    }

    /// Forks the side stream from the main one (it waits for everything issued so far, so it
    /// sees this layer's normed input and every buffer made before, and its allocations come
    /// after the main stream's last reads of memory the side stream freed).
    fn side_branch(&self) -> Result<()> {
        if !self.concurrent.get() {
            return Ok(());
        }
        if self.side.get().is_none() {
            let side = self.gpu.sibling()?;
            let _ = self.side.set(side);
        }
        let side = self.side.get().expect("made above");
        side.wait_for(&self.gpu)?;
        self.on_side.set(true);
        Ok(())
    }

    fn main_branch(&self) {
        self.on_side.set(false);
    }

    /// The main stream waits for the side stream's work (before it reads the attention output,
    /// and before anything either branch read is freed on the main stream).
    fn join_branches(&self) -> Result<()> {
        self.on_side.set(false);
        match self.side.get() {
            Some(side) if self.concurrent.get() => self.gpu.wait_for(side),
            _ => Ok(()),
        }
    }

    fn prepare_batch(
        &self,
        batch: &SeqBatch,
        ids: &[u32],
        cache_slots: usize,
        capacity: usize,
    ) -> Result<CudaBatch<T>> {
        if ids.len() != batch.total_tokens() {
            return Err(Error::invalid(format!(
                "batch: {} token ids for a layout of {} tokens",
                ids.len(),
                batch.total_tokens()
            )));
        }
        let ids: Vec<i32> = ids
            .iter()
            .map(|&i| int32(i as usize, "token id"))
            .collect::<Result<_>>()?;
        let slots: Vec<i32> = batch
            .slots
            .iter()
            .map(|&s| int32(s, "slot"))
            .collect::<Result<_>>()?;
        let attn = self.g().attn_batch(
            &batch.slots,
            &batch.lens,
            &batch.starts,
            cache_slots,
            capacity,
        )?;
        Ok(CudaBatch {
            seq: batch.clone(),
            ids: self.g().upload(&ids)?,
            slots_host: slots,
            attn,
            cache_slots,
            capacity,
            ssd_plan: RefCell::new(None),
        })
    }

    fn embedding(&self, table: &CudaWeight<T>, batch: &CudaBatch<T>) -> Result<CudaTensor<T>> {
        let (vocab, dim) = matrix_dims(table, "embedding table")?;
        let tokens = batch.seq.total_tokens();
        let mut out = self.alloc(tokens, dim, "embedding output")?;
        let dst = out.dense_mut().expect("fresh buffer");
        self.g()
            .embedding_into(&table.buf, &batch.ids, dst, vocab, dim)?;
        Ok(out)
    }

    fn linear(&self, x: &CudaTensor<T>, w: &CudaWeight<T>) -> Result<CudaTensor<T>> {
        let (n, k) = matrix_dims(w, "linear weight")?;
        if x.cols != k {
            return Err(Error::invalid(format!(
                "linear: input [{}, {}] does not match weight [{n}, {k}]",
                x.rows, x.cols
            )));
        }
        let mut out = self.alloc(x.rows, n, "linear output")?;
        let dst = out.dense_mut().expect("fresh buffer");
        self.g()
            .linear_into(x.view(), &w.buf, dst, x.rows, k, n, false)?;
        Ok(out)
    }

    fn linear_add(
        &self,
        x: &CudaTensor<T>,
        w: &CudaWeight<T>,
        out: &mut CudaTensor<T>,
    ) -> Result<()> {
        let (n, k) = matrix_dims(w, "linear weight")?;
        if x.cols != k || out.rows != x.rows || out.cols != n {
            return Err(Error::invalid(format!(
                "linear_add: input [{}, {}], weight [{n}, {k}] and output [{}, {}] do not match",
                x.rows, x.cols, out.rows, out.cols
            )));
        }
        let rows = x.rows;
        self.make_unique(out, "residual stream")?;
        let dst = out.dense_mut().expect("made dense and unique above");
        self.g()
            .linear_into(x.view(), &w.buf, dst, rows, k, n, true)
    }

    fn rms_norm(&self, x: &CudaTensor<T>, w: &CudaWeight<T>, eps: f32) -> Result<CudaTensor<T>> {
        vector_len(w, "rms_norm weight", x.cols)?;
        let x = self.densify(x, "rms_norm input")?;
        let mut out = self.alloc(x.rows, x.cols, "rms_norm output")?;
        let dst = out.dense_mut().expect("fresh buffer");
        let src = x.dense().expect("densified");
        self.g()
            .rms_norm_into(src, &w.buf, None, dst, x.rows, x.cols, eps)?;
        Ok(out)
    }

    fn add_assign(&self, x: &mut CudaTensor<T>, y: &CudaTensor<T>) -> Result<()> {
        Self::check_rows("add", y, x.rows, x.cols)?;
        self.make_unique(x, "add output")?;
        let (rows, cols) = (x.rows, x.cols);
        let dst = x.dense_mut().expect("made dense and unique above");
        self.g().add_into(dst, y.view(), rows, cols)
    }

    fn split_cols(&self, x: &CudaTensor<T>, widths: &[usize]) -> Result<Vec<CudaTensor<T>>> {
        if widths.iter().sum::<usize>() != x.cols {
            return Err(Error::invalid(format!(
                "split_cols: widths {widths:?} do not add up to {} columns",
                x.cols
            )));
        }
        let mut off = 0;
        Ok(widths
            .iter()
            .map(|&w| {
                let t = CudaTensor {
                    buf: x.buf.clone(),
                    offset: x.offset + off,
                    rows: x.rows,
                    cols: w,
                    row_stride: x.row_stride,
                };
                off += w;
                t
            })
            .collect())
    }

    fn select_rows(&self, x: &CudaTensor<T>, rows: &[usize]) -> Result<CudaTensor<T>> {
        if let Some(&r) = rows.iter().find(|&&r| r >= x.rows) {
            return Err(Error::invalid(format!(
                "select_rows: row {r} out of range for {} rows",
                x.rows
            )));
        }
        // Every row in order (a decode step's last rows): the tensor itself, no launch, so that
        // a captured step does not upload anything.
        if rows.len() == x.rows && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(x.clone());
        }
        let idx: Vec<i32> = rows
            .iter()
            .map(|&r| int32(r, "row"))
            .collect::<Result<_>>()?;
        let idx = self.g().upload(&idx)?;
        let mut out = self.alloc(rows.len(), x.cols, "select_rows output")?;
        let dst = out.dense_mut().expect("fresh buffer");
        self.g().gather_rows_into(x.view(), &idx, dst, x.cols)?;
        Ok(out)
    }

    fn swiglu(&self, gate: &CudaTensor<T>, up: &CudaTensor<T>) -> Result<CudaTensor<T>> {
        Self::check_rows("swiglu", up, gate.rows, gate.cols)?;
        let mut out = self.alloc(gate.rows, gate.cols, "swiglu output")?;
        let dst = out.dense_mut().expect("fresh buffer");
        self.g()
            .swiglu_into(gate.view(), up.view(), dst, gate.rows, gate.cols)?;
        Ok(out)
    }

    fn gate_output(
        &self,
        y: &CudaTensor<T>,
        z: &CudaTensor<T>,
        norm: Option<&CudaWeight<T>>,
        groups: usize,
        eps: f32,
        norm_before_gate: bool,
    ) -> Result<CudaTensor<T>> {
        Self::check_rows("gate_output", z, y.rows, y.cols)?;
        if let Some(w) = norm {
            vector_len(w, "mamba norm weight", y.cols)?;
        }
        let mut out = self.alloc(y.rows, y.cols, "gated norm output")?;
        let dst = out.dense_mut().expect("fresh buffer");
        self.g().gated_rms_norm_into(
            y.view(),
            Some(z.view()),
            norm.map(|w| &w.buf),
            dst,
            y.rows,
            y.cols,
            groups,
            eps,
            norm_before_gate,
        )?;
        Ok(out)
    }

    fn new_kv_cache(
        &self,
        slots: usize,
        capacity: usize,
        shape: AttnShape,
    ) -> Result<CudaKvCache<T>> {
        let cache = self
            .gpu
            .kv_cache::<T>(slots, capacity, shape.n_kv_heads, shape.head_dim)?;
        Ok(CudaKvCache { cache, shape })
    }

    fn new_state(&self, slots: usize, width: usize, kind: StateKind) -> Result<CudaState<T>> {
        let n = slots.checked_mul(width).filter(|&n| n > 0).ok_or_else(|| {
            Error::invalid(format!(
                "state: empty or overflowing [{slots} slots, {width}]"
            ))
        })?;
        Ok(match kind {
            StateKind::Conv => CudaState::Conv {
                buf: self.zeros::<T>(n, "the conv state")?,
                width,
            },
            StateKind::Ssm => CudaState::Ssm {
                buf: self.zeros::<f32>(n, "the SSM state")?,
                width,
            },
        })
    }

    fn reset_state(&self, state: &mut CudaState<T>, slot: usize) -> Result<()> {
        let s = self.g().stream();
        let r = match state {
            CudaState::Conv { buf, width } => {
                let w = *width;
                if (slot + 1) * w > buf.len() {
                    return Err(Error::invalid(format!("state: slot {slot} out of range")));
                }
                s.memset_zeros(&mut buf.slice_mut(slot * w..(slot + 1) * w))
            }
            CudaState::Ssm { buf, width } => {
                let w = *width;
                if (slot + 1) * w > buf.len() {
                    return Err(Error::invalid(format!("state: slot {slot} out of range")));
                }
                s.memset_zeros(&mut buf.slice_mut(slot * w..(slot + 1) * w))
            }
        };
        r.map_err(|e| Error::Cuda(format!("zeroing the state of slot {slot}: {e:?}")))
    }

    fn attention(
        &self,
        q: CudaTensor<T>,
        k: &CudaTensor<T>,
        v: &CudaTensor<T>,
        cache: &mut CudaKvCache<T>,
        batch: &CudaBatch<T>,
        shape: AttnShape,
        rope_theta: f64,
    ) -> Result<CudaTensor<T>> {
        let (hq, hkv, hd) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
        let tokens = batch.seq.total_tokens();
        Self::check_rows("attention q", &q, tokens, hq * hd)?;
        Self::check_rows("attention k", k, tokens, hkv * hd)?;
        Self::check_rows("attention v", v, tokens, hkv * hd)?;
        if shape != cache.shape {
            return Err(Error::invalid(format!(
                "attention: cache built for {:?}, called with {shape:?}",
                cache.shape
            )));
        }
        let mut q = q;
        self.make_unique(&mut q, "attention q")?;
        self.inv_freq(hd, rope_theta)?;
        {
            let freqs = self.inv_freq.borrow();
            let f = &freqs[&(hd, rope_theta.to_bits())];
            let qd = q.dense_mut().expect("made dense and unique above");
            self.g().kv_append(
                qd,
                k.view(),
                v.view(),
                f,
                &mut cache.cache,
                &batch.attn,
                hq,
                1.0,
            )?;
        }
        let mut out = self.alloc(tokens, hq * hd, "attention output")?;
        let dst = out.dense_mut().expect("fresh buffer");
        let qd = q.dense().expect("dense");
        let fast = !T::HALF || hd == 64 || hd == 128;
        if !fast {
            // Head dims the tensor-core kernels are not built for (the tiny test models).
            self.g()
                .attention_reference_into(qd, &cache.cache, &batch.attn, hq, dst)?;
        } else if batch.is_decode() {
            let key = (batch.seq.num_seqs(), hq, hd, batch.capacity);
            let mut scratch = self.decode_scratch.borrow_mut();
            let s = match scratch.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.g().decode_scratch(key.0, hq, hd, batch.capacity)?)
                }
            };
            self.g()
                .attention_decode_into(qd, &cache.cache, &batch.attn, hq, s, dst)?;
        } else {
            self.g()
                .attention_prefill_into(qd, &cache.cache, &batch.attn, hq, dst)?;
        }
        Ok(out)
    }

    fn conv1d_silu(
        &self,
        x: &CudaTensor<T>,
        weight: &CudaWeight<T>,
        bias: Option<&CudaWeight<T>>,
        state: &mut CudaState<T>,
        batch: &CudaBatch<T>,
        width: usize,
    ) -> Result<CudaTensor<T>> {
        let tokens = batch.seq.total_tokens();
        let c = x.cols;
        Self::check_rows("conv1d x", x, tokens, c)?;
        if weight.shape != [c, width] {
            return Err(Error::invalid(format!(
                "conv1d: weight is {:?}, expected [{c}, {width}]",
                weight.shape
            )));
        }
        if let Some(b) = bias {
            vector_len(b, "conv1d bias", c)?;
        }
        let CudaState::Conv { buf: st, width: w } = state else {
            return Err(Error::invalid(
                "conv1d: given the SSM state, not the conv state",
            ));
        };
        if *w != c * (width - 1) {
            return Err(Error::invalid(format!(
                "conv1d: the state holds {w} values per slot, expected C*(K-1) = {}",
                c * (width - 1)
            )));
        }
        let mut out = self.alloc(tokens, c, "conv1d output")?;
        let dst = out.dense_mut().expect("fresh buffer");
        let nseq = batch.seq.num_seqs();
        let dims = Conv1dDims {
            batch: nseq,
            tokens,
            channels: c,
            width,
            silu: true,
        };
        if batch.is_decode() {
            self.g().conv1d_update_into(
                x.view(),
                &weight.buf,
                bias.map(|b| &b.buf),
                st,
                Some(batch.attn.slot_idx()),
                dst,
                dims,
            )?;
        } else {
            self.g().conv1d_fwd_into(
                x.view(),
                &weight.buf,
                bias.map(|b| &b.buf),
                Some(st),
                Some(batch.attn.cu_seqlens()),
                Some(batch.attn.slot_idx()),
                dst,
                dims,
            )?;
        }
        Ok(out)
    }

    fn ssd(
        &self,
        x: &CudaTensor<T>,
        dt: &CudaTensor<T>,
        b: &CudaTensor<T>,
        c: &CudaTensor<T>,
        params: MambaParams<'_, CudaWeight<T>>,
        state: &mut CudaState<T>,
        batch: &CudaBatch<T>,
        shape: SsdShape,
    ) -> Result<CudaTensor<T>> {
        let (h, p, g, n) = (shape.heads, shape.head_dim, shape.groups, shape.state);
        let tokens = batch.seq.total_tokens();
        Self::check_rows("ssd x", x, tokens, h * p)?;
        Self::check_rows("ssd dt", dt, tokens, h)?;
        Self::check_rows("ssd B", b, tokens, g * n)?;
        Self::check_rows("ssd C", c, tokens, g * n)?;
        for (w, name) in [
            (params.dt_bias, "dt_bias"),
            (params.a_log, "A_log"),
            (params.d, "D"),
        ] {
            vector_len(w, name, h)?;
        }
        let CudaState::Ssm { buf: st, .. } = state else {
            return Err(Error::invalid(
                "ssd: given the conv state, not the SSM state",
            ));
        };
        let mut y = self.alloc(tokens, h * p, "ssd output")?;
        let dst = y.dense_mut().expect("fresh buffer");
        if batch.is_decode() {
            let inp = SsmUpdateInputs {
                x: x.view(),
                dt: dt.view(),
                dt_bias: &params.dt_bias.buf,
                a_log: &params.a_log.buf,
                b: b.view(),
                c: c.view(),
                d: Some(&params.d.buf),
                z: None,
                dt_limit: shape.dt_limit,
                slot_idx: Some(batch.attn.slot_idx()),
            };
            let dims = SsmUpdateCudaDims {
                batch: batch.seq.num_seqs(),
                heads: h,
                head_dim: p,
                groups: g,
                state: n,
            };
            self.g().ssm_update::<T, f32>(st, &inp, dst, dims)?;
        } else {
            let dims = SsdCudaDims {
                heads: h,
                head_dim: p,
                groups: g,
                state: n,
                chunk_size: shape.chunk_size,
                dt_limit: shape.dt_limit,
            };
            let inp = SsdCudaInputs {
                x: x.view(),
                dt: dt.view(),
                dt_bias: &params.dt_bias.buf,
                a_log: &params.a_log.buf,
                b: b.view(),
                c: c.view(),
                d: Some(&params.d.buf),
            };
            let slots = &batch.slots_host;
            // Fresh sequences had their state zeroed (HybridModel::plan_step), so reading the
            // initial state is right for every sequence.
            let chunked = matches!(p, 64 | 128)
                && matches!(n, 64 | 128 | 256)
                && matches!(shape.chunk_size, 64 | 128 | 256);
            if !chunked {
                // Sizes the chunked kernels are not built for (the tiny test models).
                self.g().ssd_scan_reference(
                    &inp,
                    dims,
                    &batch.seq.cu_seqlens(),
                    slots,
                    st,
                    true,
                    dst,
                )?;
            } else {
                let mut plan = batch.ssd_plan.borrow_mut();
                if !matches!(plan.as_ref(), Some(pl) if pl.dims() == dims) {
                    *plan = Some(self.g().ssd_plan::<T>(
                        dims,
                        &batch.seq.cu_seqlens(),
                        Some(slots),
                    )?);
                }
                let pl = plan.as_mut().expect("made above");
                self.g().ssd_chunked_planned(pl, &inp, st, true, dst)?;
            }
        }
        Ok(y)
    }

    fn peak_memory(&self) -> Option<u64> {
        self.gpu.peak_memory().ok()
    }

    fn to_host(&self, x: &CudaTensor<T>) -> Result<HostTensor> {
        let x = self.densify(x, "copy to host")?;
        let data = self.g().download(x.dense().expect("densified"))?;
        HostTensor::new(
            vec![x.rows, x.cols],
            data.into_iter().map(GpuDtype::to_f32).collect(),
        )
    }
}
