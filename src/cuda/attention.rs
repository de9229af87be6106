//! Attention on the GPU: RoPE + KV-cache append (kernels/kv_append.cu), causal prefill
//! (kernels/attention_prefill.cu for bf16/f16, the scalar `attn_fwd_f32` of
//! kernels/attention_decode.cu for f32) and split-KV decode with its log-sum-exp combine
//! (kernels/attention_decode.cu).
//!
//! # KV cache layout
//! One [`GpuKvCache`] per layer holds keys and values, each `[slots, capacity, Hkv, hd]` dense in
//! the activation dtype: token `t` of slot `s`, kv head `g` starts at element
//! `((s * capacity + t) * Hkv + g) * hd`.
//!
//! # Batches
//! An [`AttnBatch`] describes a packed (varlen) batch on the device: sequence `b` has `lens[b]`
//! new tokens (packed rows `cu_seqlens[b] .. cu_seqlens[b+1]` of q, k, v and out), `starts[b]`
//! tokens already cached in slot `slots[b]`. A step is: [`Gpu::kv_append`] (RoPE on q and k, append
//! k and v), then [`Gpu::attention_prefill_into`] or, when every sequence has one new token,
//! [`Gpu::attention_decode_into`].
//!
//! # Head dims
//! bf16 and f16: head_dim 64 or 128 (the tensor-core prefill kernels and the decode kernels are
//! built for those only; anything else is an error). f32 (the parity path): any even head_dim
//! from 2 to 256; decode at 64 and 128 uses the split-KV kernels, other sizes the scalar f32
//! kernel (which handles one new token per sequence as well).
//!
//! # Hopper prefill
//! On compute capability 9.0 (H100/H200) there are also wgmma prefill kernels
//! (kernels/attention_prefill_sm90.cu, `attn_fwd_{bf16,f16}_hd{64,128}_sm90`), launched by
//! [`Gpu::attention_prefill_sm90_into`]. [`Gpu::attention_prefill_into`] takes them on a cc 9.0
//! device (their GPU tests passed on an H200, 2026-11-27) unless the environment variable
//! [`ATTN_SM90_ENV`]` = 0` is set; [`Gpu::attention_prefill_mma_into`] always runs the sm_80
//! kernels (which every other card uses).
//!
//! Everything is asynchronous on [`Gpu::stream`] and can be captured in a CUDA graph: the kernels
//! read lengths, positions and slots from the batch's device arrays, which
//! [`Gpu::attn_batch_update`] rewrites in place between replays.

use super::conv1d::{elem_ptr, Strided};
use super::params::{
    AttnParams, KvAppendParams, ATTN_DEC_MAX_WARPS, ATTN_DEC_STAGES, ATTN_DEC_STAGE_BYTES,
    ATTN_FWD_BLOCK_M, ATTN_FWD_SM90_BLOCK_M, ATTN_FWD_SM90_SMEM_HD128, ATTN_FWD_SM90_SMEM_HD64,
    ATTN_FWD_SM90_THREADS, ATTN_FWD_SMEM_HD128, ATTN_FWD_SMEM_HD64, ATTN_FWD_THREADS,
};
use super::{cuda_err, Gpu, GpuDtype};
use crate::error::{Error, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::ffi::c_void;

// SAFETY: plain C structs of pointers and integers, passed by value as the kernel argument.
unsafe impl cudarc::driver::DeviceRepr for AttnParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for KvAppendParams {}

/// Element types the attention kernels take: `half::bf16`, `half::f16` and `f32`.
pub trait AttnDtype: GpuDtype {
    /// Whether the dtype runs on the tensor-core kernels (head_dim 64 or 128 only).
    const HALF: bool;
}
impl AttnDtype for half::bf16 {
    const HALF: bool = true;
}
impl AttnDtype for half::f16 {
    const HALF: bool = true;
}
impl AttnDtype for f32 {
    const HALF: bool = false;
}

/// Environment variable that, set to `0`, keeps [`Gpu::attention_prefill_into`] on the sm_80
/// kernels on a compute capability 9.0 device, where the Hopper (sm90) kernels are the default
/// (see the module docs); any other value or none leaves the default.
pub const ATTN_SM90_ENV: &str = "FH1_ATTN_SM90";

/// Largest f32 head_dim (the scalar f32 kernels keep 8 values per lane).
pub const MAX_F32_HEAD_DIM: usize = 256;

/// Query heads per decode block, by GQA ratio (a block serves `gq` of the `Hq / Hkv` query heads
/// sharing one kv head; the decode kernels are built for these `gq`).
fn decode_gq(rep: usize) -> usize {
    match rep {
        1 => 1,
        2 => 2,
        3 | 4 => 4,
        5 | 6 => 6,
        _ => 8,
    }
}

/// Fewest keys per split worth a block of the decode kernels (kernels/attention_decode.cu's
/// DEC_MIN_CHUNK: on the device a split is never shorter than this either).
const DECODE_MIN_KEYS_PER_SPLIT: usize = 256;
/// Most splits per (sequence, kv head) (the two-pass combine kernel's shared memory holds 1024
/// weights, the fused kernel's combine 8 x 1024).
const DECODE_MAX_SPLITS: usize = 1024;

/// Environment variable that selects the decode path: `two_pass` runs the previous kernels
/// (`attn_decode_<T>_hd<hd>_g<gq>` + `attn_decode_combine_<T>`, two launches) for bisecting;
/// anything else, or unset, the fused kernel `attn_decode_fused_<T>_hd<hd>_g<gq>`.
pub const ATTN_DECODE_ENV: &str = "FH1_ATTN_DECODE";

/// The split-KV rule, for the fused decode kernel's one resident block per SM (up to 8 warps and
/// ~192 KB of shared memory each): with `units = batch * kv_blocks` groups of `splits` blocks,
/// pick the fewest splits that reach the best wave efficiency `units * splits / (waves * SMs)`,
/// trying 1 to `2 * ceil(SMs / units)` splits, and no split shorter than
/// [`DECODE_MIN_KEYS_PER_SPLIT`] keys of `max_kv`. Fewest, because every split adds a partial
/// that the last block of its group reads back in the combine (6 heads x 512 B per split at the
/// 7B shape). 7B b1 32768 cached (2 units): 66 splits = 132 blocks, one per SM; b32 8192 (64
/// units): 2 splits = 128 blocks.
pub fn decode_num_splits(batch: usize, kv_blocks: usize, max_kv: usize, sm_count: usize) -> usize {
    let units = batch.saturating_mul(kv_blocks).max(1);
    let sm = sm_count.max(1);
    let cap = max_kv
        .div_ceil(DECODE_MIN_KEYS_PER_SPLIT)
        .clamp(1, DECODE_MAX_SPLITS);
    let hi = (2 * sm.div_ceil(units)).min(cap).max(1);
    // Efficiency of s splits as the fraction blocks / (waves * sm), compared exactly.
    let eff = |s: usize| {
        let blocks = units.saturating_mul(s);
        (blocks, blocks.div_ceil(sm).saturating_mul(sm))
    };
    let (mut best, mut best_eff) = (1, eff(1));
    for s in 2..=hi {
        let e = eff(s);
        if (e.0 as u128) * (best_eff.1 as u128) > (best_eff.0 as u128) * (e.1 as u128) {
            best = s;
            best_eff = e;
        }
    }
    best
}

/// One layer's KV cache on the device: `keys` and `values`, each `[slots, capacity, Hkv, hd]`
/// dense in `T` (token `t` of slot `s`, kv head `g` at `((s * capacity + t) * Hkv + g) * hd`).
pub struct GpuKvCache<T: AttnDtype> {
    keys: CudaSlice<T>,
    values: CudaSlice<T>,
    slots: usize,
    capacity: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl<T: AttnDtype> GpuKvCache<T> {
    /// Sequence slots.
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// Tokens per slot.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Key/value heads (Hkv).
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    /// Head size (hd).
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Keys `[slots, capacity, Hkv, hd]`.
    pub fn keys(&self) -> &CudaSlice<T> {
        &self.keys
    }
    /// Values `[slots, capacity, Hkv, hd]`.
    pub fn values(&self) -> &CudaSlice<T> {
        &self.values
    }
    /// Device bytes of keys and values together.
    pub fn bytes(&self) -> usize {
        2 * self.keys.len() * std::mem::size_of::<T>()
    }
    /// Keys and values, mutable (e.g. to copy a slot; the layout is the struct's).
    pub fn keys_values_mut(&mut self) -> (&mut CudaSlice<T>, &mut CudaSlice<T>) {
        (&mut self.keys, &mut self.values)
    }
}

/// A packed batch described on the device: `cu_seqlens [batch + 1]`, `seq_start [batch]` and
/// `slot_idx [batch]` as int32 (see the module docs), plus host copies for validation and launch
/// geometry.
pub struct AttnBatch {
    cu_seqlens: CudaSlice<i32>,
    seq_start: CudaSlice<i32>,
    slot_idx: CudaSlice<i32>,
    lens: Vec<usize>,
    starts: Vec<usize>,
    slots: Vec<usize>,
    tokens: usize,
    max_new: usize,
    max_kv: usize,
}

impl AttnBatch {
    /// Sequences.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }
    /// New tokens of all sequences (packed rows of q, k, v and out).
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// Most new tokens of any sequence.
    pub fn max_new(&self) -> usize {
        self.max_new
    }
    /// Most keys of any sequence after the append (`starts[b] + lens[b]`).
    pub fn max_kv(&self) -> usize {
        self.max_kv
    }
    /// Every sequence has exactly one new token.
    pub fn is_decode(&self) -> bool {
        self.lens.iter().all(|&l| l == 1)
    }
    /// New tokens per sequence `[batch]`.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }
    /// Cached tokens per sequence before this step `[batch]` (the first new token's position).
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }
    /// Cache slot per sequence `[batch]`.
    pub fn slots(&self) -> &[usize] {
        &self.slots
    }
    /// The device `cu_seqlens [batch + 1]` (int32).
    pub fn cu_seqlens(&self) -> &CudaSlice<i32> {
        &self.cu_seqlens
    }
    /// The device `seq_start [batch]` (int32).
    pub fn seq_start(&self) -> &CudaSlice<i32> {
        &self.seq_start
    }
    /// The device `slot_idx [batch]` (int32).
    pub fn slot_idx(&self) -> &CudaSlice<i32> {
        &self.slot_idx
    }
}

/// Scratch for split-KV decode: `partial_out [batch, Hq, splits, hd]` and
/// `partial_lse [batch, Hq, splits]` f32, sized for (batch, Hq, hd, max splits), plus the fused
/// kernel's arrival counters `[batch, Hq]` u32 (one per (sequence, kv head chunk); zeroed once
/// here, and every launch leaves them zero again). Reused across steps (and by a captured graph:
/// the split count a launch uses depends only on this scratch and the cache's Hkv, never on the
/// current lengths). Launches sharing a scratch must be ordered (one stream).
pub struct DecodeScratch {
    partial_out: CudaSlice<f32>,
    partial_lse: CudaSlice<f32>,
    counters: CudaSlice<u32>,
    /// Warps per block of the fused kernel (from the device's opt-in shared memory).
    warps: usize,
    batch: usize,
    n_heads: usize,
    head_dim: usize,
    max_kv: usize,
    max_splits: usize,
    sm_count: usize,
}

impl DecodeScratch {
    /// Sequences it serves.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Query heads (Hq).
    pub fn n_heads(&self) -> usize {
        self.n_heads
    }
    /// Head size.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// The key count the split rule was tuned for (longer sequences still work: the splits grow).
    pub fn max_kv(&self) -> usize {
        self.max_kv
    }
    /// Splits the buffers hold room for.
    pub fn max_splits(&self) -> usize {
        self.max_splits
    }
    /// Splits a launch against a cache with `n_kv_heads` kv heads uses ([`decode_num_splits`]).
    pub fn num_splits(&self, n_kv_heads: usize) -> usize {
        let rep = (self.n_heads / n_kv_heads.max(1)).max(1);
        let kv_blocks = n_kv_heads * rep.div_ceil(decode_gq(rep));
        decode_num_splits(self.batch, kv_blocks, self.max_kv, self.sm_count).min(self.max_splits)
    }
}

/// Checks `head_dim` for dtype `T` (see the module docs).
fn check_head_dim<T: AttnDtype>(op: &str, hd: usize) -> Result<()> {
    if T::HALF {
        if hd != 64 && hd != 128 {
            return Err(Error::invalid(format!(
                "{op}: head_dim {hd} is not supported for {}: the kernels are built for 64 and 128",
                T::SUFFIX
            )));
        }
    } else if hd == 0 || hd % 2 != 0 || hd > MAX_F32_HEAD_DIM {
        return Err(Error::invalid(format!(
            "{op}: head_dim {hd} is not supported for f32: it must be even, 2 to {MAX_F32_HEAD_DIM}"
        )));
    }
    Ok(())
}

/// The head dims the KV cache, the append and the scalar reference kernels take, in every dtype:
/// even, 2 to [`MAX_F32_HEAD_DIM`].
fn check_any_head_dim(op: &str, hd: usize) -> Result<()> {
    if hd == 0 || hd % 2 != 0 || hd > MAX_F32_HEAD_DIM {
        return Err(Error::invalid(format!(
            "{op}: head_dim {hd} is not supported: it must be even, 2 to {MAX_F32_HEAD_DIM}"
        )));
    }
    Ok(())
}

/// Which prefill kernel a launch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrefillKernel {
    /// bf16/f16 tensor cores, mma.sync (sm_80 and newer); f32 runs the scalar kernel.
    Mma,
    /// bf16/f16 wgmma (compute capability 9.0 only).
    Sm90,
    /// The scalar kernel, any even head dim, every dtype.
    Scalar,
}

/// Host validation of a batch's arrays against a cache's geometry.
fn check_batch_host(
    op: &str,
    slots: &[usize],
    lens: &[usize],
    starts: &[usize],
    cache_slots: usize,
    capacity: usize,
) -> Result<()> {
    let batch = lens.len();
    if batch == 0 {
        return Err(Error::invalid(format!("{op}: empty batch")));
    }
    if slots.len() != batch || starts.len() != batch {
        return Err(Error::invalid(format!(
            "{op}: slots [{}], lens [{}] and starts [{}] must all be [batch]",
            slots.len(),
            batch,
            starts.len()
        )));
    }
    if batch > 65_535 {
        return Err(Error::invalid(format!(
            "{op}: batch {batch} is more than one launch handles (at most 65535 sequences)"
        )));
    }
    if capacity > i32::MAX as usize || cache_slots > i32::MAX as usize {
        return Err(Error::invalid(format!(
            "{op}: cache [slots={cache_slots}, capacity={capacity}] exceeds int32 indexing"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(batch);
    for b in 0..batch {
        let (slot, len, start) = (slots[b], lens[b], starts[b]);
        if len == 0 {
            return Err(Error::invalid(format!(
                "{op}: sequence {b} has no new tokens (every sequence needs at least one)"
            )));
        }
        if slot >= cache_slots {
            return Err(Error::invalid(format!(
                "{op}: sequence {b} uses slot {slot}, but the cache has {cache_slots} slots"
            )));
        }
        if !seen.insert(slot) {
            return Err(Error::invalid(format!(
                "{op}: slot {slot} is used by more than one sequence (sequence {b} repeats it)"
            )));
        }
        if !matches!(start.checked_add(len), Some(e) if e <= capacity) {
            return Err(Error::invalid(format!(
                "{op}: slot {slot} (sequence {b}) holds {start} tokens and gets {len} more, \
                 past its capacity of {capacity}"
            )));
        }
    }
    Ok(())
}

/// `(cu_seqlens, seq_start, slot_idx)` as int32 host arrays (values validated to fit).
fn batch_arrays(slots: &[usize], lens: &[usize], starts: &[usize]) -> [Vec<i32>; 3] {
    let mut cu = Vec::with_capacity(lens.len() + 1);
    cu.push(0i32);
    let mut acc = 0usize;
    for &l in lens {
        acc += l;
        cu.push(acc as i32);
    }
    [
        cu,
        starts.iter().map(|&s| s as i32).collect(),
        slots.iter().map(|&s| s as i32).collect(),
    ]
}

impl Gpu {
    /// A zeroed KV cache: keys and values `[slots, capacity, Hkv, hd]` in `T` (see
    /// [`GpuKvCache`]). Errors name the sizes and bytes when the allocation fails.
    pub fn kv_cache<T: AttnDtype>(
        &self,
        slots: usize,
        capacity: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<GpuKvCache<T>> {
        const OP: &str = "kv_cache";
        check_any_head_dim(OP, head_dim)?;
        if slots == 0 || capacity == 0 || n_kv_heads == 0 {
            return Err(Error::invalid(format!(
                "{OP}: empty cache [slots={slots}, capacity={capacity}, Hkv={n_kv_heads}, \
                 hd={head_dim}]"
            )));
        }
        if slots > i32::MAX as usize || capacity > i32::MAX as usize {
            return Err(Error::invalid(format!(
                "{OP}: [slots={slots}, capacity={capacity}] exceeds int32 slot and position indices"
            )));
        }
        let shape =
            format!("[slots={slots}, capacity={capacity}, Hkv={n_kv_heads}, hd={head_dim}]");
        let n = slots
            .checked_mul(capacity)
            .and_then(|n| n.checked_mul(n_kv_heads))
            .and_then(|n| n.checked_mul(head_dim))
            .filter(|n| n.checked_mul(2 * std::mem::size_of::<T>()).is_some())
            .ok_or_else(|| Error::invalid(format!("{OP}: {shape} overflows")))?;
        let bytes = 2 * n * std::mem::size_of::<T>();
        let alloc = |what: &str| {
            self.stream.alloc_zeros::<T>(n).map_err(|e| {
                cuda_err(
                    &format!(
                        "{OP}: allocating {what} {shape} of {} ({n} elements, {:.3} GiB; keys and \
                         values together {:.3} GiB)",
                        T::SUFFIX,
                        (n * std::mem::size_of::<T>()) as f64 / (1u64 << 30) as f64,
                        bytes as f64 / (1u64 << 30) as f64
                    ),
                    e,
                )
            })
        };
        let keys = alloc("keys")?;
        let values = alloc("values")?;
        Ok(GpuKvCache {
            keys,
            values,
            slots,
            capacity,
            n_kv_heads,
            head_dim,
        })
    }

    /// A packed batch on the device: sequence `b` has `lens[b]` new tokens, `starts[b]` tokens
    /// already in cache slot `slots[b]`. Validated on the host against a cache of `cache_slots`
    /// slots of `capacity` tokens: `lens >= 1`, slots distinct and `< cache_slots`,
    /// `starts[b] + lens[b] <= capacity` (the error names the slot, what it holds, how many more
    /// and the capacity). Uploads `cu_seqlens`, `seq_start` and `slot_idx` as int32.
    pub fn attn_batch(
        &self,
        slots: &[usize],
        lens: &[usize],
        starts: &[usize],
        cache_slots: usize,
        capacity: usize,
    ) -> Result<AttnBatch> {
        const OP: &str = "attn_batch";
        check_batch_host(OP, slots, lens, starts, cache_slots, capacity)?;
        let tokens: usize = lens.iter().sum();
        if tokens > i32::MAX as usize {
            return Err(Error::invalid(format!(
                "{OP}: {tokens} tokens exceed int32 cu_seqlens"
            )));
        }
        let [cu, st, sl] = batch_arrays(slots, lens, starts);
        let up = |v: &[i32], what: &str| {
            self.stream
                .clone_htod(v)
                .map_err(|e| cuda_err(&format!("{OP}: uploading {what}"), e))
        };
        Ok(AttnBatch {
            cu_seqlens: up(&cu, "cu_seqlens")?,
            seq_start: up(&st, "seq_start")?,
            slot_idx: up(&sl, "slot_idx")?,
            lens: lens.to_vec(),
            starts: starts.to_vec(),
            slots: slots.to_vec(),
            tokens,
            max_new: lens.iter().copied().max().unwrap_or(0),
            max_kv: (0..lens.len())
                .map(|b| starts[b] + lens[b])
                .max()
                .unwrap_or(0),
        })
    }

    /// Rewrites an existing batch's device arrays in place (for replaying a captured CUDA
    /// graph): same batch size and the same `lens`, new `slots` and `starts`, validated as in
    /// [`Gpu::attn_batch`]. The copies are ordered on [`Gpu::stream`] before later launches.
    pub fn attn_batch_update(
        &self,
        batch: &mut AttnBatch,
        slots: &[usize],
        starts: &[usize],
        cache_slots: usize,
        capacity: usize,
    ) -> Result<()> {
        const OP: &str = "attn_batch_update";
        if slots.len() != batch.batch() || starts.len() != batch.batch() {
            return Err(Error::invalid(format!(
                "{OP}: the batch has {} sequences, got slots [{}] and starts [{}]",
                batch.batch(),
                slots.len(),
                starts.len()
            )));
        }
        check_batch_host(OP, slots, &batch.lens, starts, cache_slots, capacity)?;
        let [_, st, sl] = batch_arrays(slots, &batch.lens, starts);
        self.stream
            .memcpy_htod(&st, &mut batch.seq_start)
            .map_err(|e| cuda_err(&format!("{OP}: uploading seq_start"), e))?;
        self.stream
            .memcpy_htod(&sl, &mut batch.slot_idx)
            .map_err(|e| cuda_err(&format!("{OP}: uploading slot_idx"), e))?;
        batch.starts = starts.to_vec();
        batch.slots = slots.to_vec();
        batch.max_kv = (0..batch.lens.len())
            .map(|b| starts[b] + batch.lens[b])
            .max()
            .unwrap_or(0);
        Ok(())
    }

    /// RoPE inverse frequencies `[head_dim / 2]` f32 on the device, exactly
    /// [`crate::cpu::rope_inv_freq`].
    pub fn rope_inv_freq(&self, head_dim: usize, theta: f64) -> Result<CudaSlice<f32>> {
        if head_dim == 0 || head_dim % 2 != 0 || !theta.is_finite() || theta <= 0.0 {
            return Err(Error::invalid(format!(
                "rope_inv_freq: head_dim {head_dim} must be even and >= 2, theta {theta} finite \
                 and > 0"
            )));
        }
        self.upload(&crate::cpu::rope_inv_freq(head_dim, theta))
    }

    /// Checks the cache against the batch and the head counts; returns (Hkv, hd).
    fn check_attn_common<T: AttnDtype>(
        &self,
        op: &str,
        cache: &GpuKvCache<T>,
        batch: &AttnBatch,
        n_heads: usize,
        fast_kernels: bool,
    ) -> Result<(usize, usize)> {
        let (hkv, hd) = (cache.n_kv_heads, cache.head_dim);
        if fast_kernels {
            check_head_dim::<T>(op, hd)?;
        } else {
            check_any_head_dim(op, hd)?;
        }
        if n_heads == 0 || n_heads % hkv != 0 {
            return Err(Error::invalid(format!(
                "{op}: n_heads (Hq) = {n_heads} must be a positive multiple of the cache's \
                 n_kv_heads (Hkv) = {hkv}"
            )));
        }
        if !matches!(n_heads.checked_mul(hd), Some(w) if w <= i32::MAX as usize) {
            return Err(Error::invalid(format!(
                "{op}: Hq {n_heads} x hd {hd} is too wide"
            )));
        }
        // The batch was validated against the geometry its caller named; check it against this
        // cache (cheap: the batch is small), so no kernel can index outside it.
        check_batch_host(
            op,
            &batch.slots,
            &batch.lens,
            &batch.starts,
            cache.slots,
            cache.capacity,
        )?;
        let kv = [
            ("slots", cache.slots),
            ("capacity", cache.capacity),
            ("Hkv", hkv),
            ("hd", hd),
        ];
        self.check_buf(op, "cache keys", &cache.keys, &kv)?;
        self.check_buf(op, "cache values", &cache.values, &kv)?;
        for (name, buf, n) in [
            ("cu_seqlens", &batch.cu_seqlens, batch.batch() + 1),
            ("seq_start", &batch.seq_start, batch.batch()),
            ("slot_idx", &batch.slot_idx, batch.batch()),
        ] {
            self.check_buf(op, name, buf, &[("n", n)])?;
        }
        Ok((hkv, hd))
    }

    /// Applies NeoX RoPE to `q` (in place) and `k`, scales k by `k_scale`, and appends k and v to
    /// the cache.
    ///
    /// - `q [tokens, Hq * hd]` dense (`tokens = batch.tokens()`), rotated in place;
    /// - `k`, `v [tokens, Hkv * hd]` strided views (e.g. column slices of a fused QKV projection);
    /// - `inv_freq [hd / 2]` f32 ([`Gpu::rope_inv_freq`]);
    /// - new token `i` of sequence `b` has position `starts[b] + i`; its roped, scaled key and its
    ///   value become row `starts[b] + i` of slot `slots[b]` of `cache`.
    ///
    /// Numerics match [`crate::cpu::rope_neox`] (f32 angle, cos/sin from f64, f32 rotation
    /// without FMA contraction), then `round_T(rope(k) * k_scale)`.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_append<T: AttnDtype>(
        &self,
        q: &mut CudaSlice<T>,
        k: Strided<'_, T>,
        v: Strided<'_, T>,
        inv_freq: &CudaSlice<f32>,
        cache: &mut GpuKvCache<T>,
        batch: &AttnBatch,
        n_heads: usize,
        k_scale: f32,
    ) -> Result<()> {
        const OP: &str = "kv_append";
        let (hkv, hd) = self.check_attn_common(OP, cache, batch, n_heads, false)?;
        if !k_scale.is_finite() {
            return Err(Error::invalid(format!(
                "{OP}: k_scale {k_scale} is not finite"
            )));
        }
        let tokens = batch.tokens;
        self.check_buf(OP, "q", q, &[("tokens", tokens), ("Hq * hd", n_heads * hd)])?;
        self.check_strided(OP, "k", &k, tokens, hkv * hd)?;
        self.check_strided(OP, "v", &v, tokens, hkv * hd)?;
        self.check_buf(OP, "inv_freq", inv_freq, &[("hd / 2", hd / 2)])?;
        let f = self.function(&format!("kv_append_{}", T::SUFFIX))?;

        let s = &self.stream;
        let (qp, _gq) = q.device_ptr_mut(s);
        let (kp, _gk) = k.buf.device_ptr(s);
        let (vp, _gv) = v.buf.device_ptr(s);
        let (fp, _gf) = inv_freq.device_ptr(s);
        let (kcp, _gkc) = cache.keys.device_ptr_mut(s);
        let (vcp, _gvc) = cache.values.device_ptr_mut(s);
        let (cup, _gcu) = batch.cu_seqlens.device_ptr(s);
        let (stp, _gst) = batch.seq_start.device_ptr(s);
        let (slp, _gsl) = batch.slot_idx.device_ptr(s);
        let p = KvAppendParams {
            q: qp as usize as *mut c_void,
            k: elem_ptr::<T>(kp, k.offset),
            v: elem_ptr::<T>(vp, v.offset),
            k_cache: kcp as usize as *mut c_void,
            v_cache: vcp as usize as *mut c_void,
            inv_freq: fp as usize as *const f32,
            cu_seqlens: cup as usize as *const i32,
            seq_start: stp as usize as *const i32,
            slot_idx: slp as usize as *const i32,
            tokens: tokens as i64,
            batch: batch.batch() as i64,
            n_heads: n_heads as i64,
            n_kv_heads: hkv as i64,
            head_dim: hd as i64,
            capacity: cache.capacity as i64,
            slots: cache.slots as i64,
            q_row_stride: (n_heads * hd) as i64,
            k_row_stride: k.row_stride as i64,
            v_row_stride: v.row_stride as i64,
            k_scale,
        };
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&p);
        // SAFETY: one block per packed row r < tokens (checked to fit int32): it reads and writes
        // q row r ([Hq * hd], the buffer is exactly [tokens, Hq * hd]), reads k and v row r inside
        // their checked strided extents, inv_freq [hd / 2], and the batch arrays ([batch + 1] and
        // [batch], checked); it writes cache rows (slot, pos) with slot < slots and
        // pos = starts[b] + i < capacity, as validated on the host against this cache (and
        // re-checked on the device). q and the cache are `&mut` borrows and k, v, inv_freq
        // shared ones, so nothing written aliases anything read by another thread; the guards
        // live until the launch is enqueued.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching kv_append", e))?;
        Ok(())
    }

    /// Scratch for [`Gpu::attention_decode_into`] of `batch` sequences of `n_heads` query heads
    /// of size `head_dim`: `partial_out [batch, Hq, splits, hd]` and `partial_lse [batch, Hq,
    /// splits]` f32. The split count comes from [`decode_num_splits`] with `max_kv` (the longest
    /// sequence expected), the batch, the SM count and, at launch, the cache's Hkv.
    pub fn decode_scratch(
        &self,
        batch: usize,
        n_heads: usize,
        head_dim: usize,
        max_kv: usize,
    ) -> Result<DecodeScratch> {
        const OP: &str = "decode_scratch";
        if batch == 0 || n_heads == 0 || head_dim == 0 || max_kv == 0 {
            return Err(Error::invalid(format!(
                "{OP}: empty [batch={batch}, Hq={n_heads}, hd={head_dim}, max_kv={max_kv}]"
            )));
        }
        let sm_count = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| cuda_err("querying the SM count", e))?
            .max(1) as usize;
        // The most splits any Hkv can ask for: Hkv = 1 with one head chunk.
        let max_splits = decode_num_splits(batch, 1, max_kv, sm_count);
        let n = batch
            .checked_mul(n_heads)
            .and_then(|n| n.checked_mul(max_splits))
            .filter(|n| n.checked_mul(head_dim).is_some())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{OP}: [batch={batch}, Hq={n_heads}, splits={max_splits}, hd={head_dim}] \
                     overflows"
                ))
            })?;
        let alloc = |len: usize, what: &str| {
            self.stream.alloc_zeros::<f32>(len).map_err(|e| {
                cuda_err(
                    &format!(
                        "{OP}: allocating {what} [batch={batch}, Hq={n_heads}, \
                         splits={max_splits}{}] f32",
                        if what == "partial_out" {
                            format!(", hd={head_dim}")
                        } else {
                            String::new()
                        }
                    ),
                    e,
                )
            })
        };
        // The fused kernel's counters: one per (sequence, kv block); kv blocks <= Hq.
        let counters = self
            .stream
            .alloc_zeros::<u32>(batch * n_heads)
            .map_err(|e| {
                cuda_err(
                    &format!("{OP}: allocating counters [batch={batch}, Hq={n_heads}] u32"),
                    e,
                )
            })?;
        // As many warps (each with its own 24 KB cp.async ring) as one block's opt-in shared
        // memory holds, at most ATTN_DEC_MAX_WARPS (8 on sm_80 / sm_90 with 163 / 227 KB; 4 on
        // sm_86 / sm_89 with 99 KB); 1 KB is left for the kernel's static shared memory.
        let optin = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| cuda_err("querying the opt-in shared memory per block", e))?
            .max(0) as usize;
        let warps = (optin.saturating_sub(1024) / Self::decode_warp_smem())
            .min(ATTN_DEC_MAX_WARPS as usize);
        if warps < 2 {
            return Err(Error::invalid(format!(
                "{OP}: the device allows {optin} bytes of shared memory per block; the decode \
                 kernel needs at least {} (two warps)",
                2 * Self::decode_warp_smem() + 1024
            )));
        }
        Ok(DecodeScratch {
            partial_out: alloc(n * head_dim, "partial_out")?,
            partial_lse: alloc(n, "partial_lse")?,
            counters,
            warps,
            batch,
            n_heads,
            head_dim,
            max_kv,
            max_splits,
            sm_count,
        })
    }

    /// Dynamic shared memory per warp of the fused decode kernel (its cp.async ring).
    fn decode_warp_smem() -> usize {
        (ATTN_DEC_STAGES * ATTN_DEC_STAGE_BYTES) as usize
    }

    /// The AttnParams every attention launch shares.
    #[allow(clippy::too_many_arguments)]
    fn attn_params(
        q: u64,
        kc: u64,
        vc: u64,
        out: u64,
        cu: u64,
        st: u64,
        sl: u64,
        batch: &AttnBatch,
        n_heads: usize,
        hkv: usize,
        hd: usize,
        slots: usize,
        capacity: usize,
    ) -> AttnParams {
        let scale = 1.0 / (hd as f32).sqrt();
        AttnParams {
            q: q as usize as *const c_void,
            k_cache: kc as usize as *const c_void,
            v_cache: vc as usize as *const c_void,
            out: out as usize as *mut c_void,
            cu_seqlens: cu as usize as *const i32,
            seq_start: st as usize as *const i32,
            slot_idx: sl as usize as *const i32,
            partial_out: std::ptr::null_mut(),
            partial_lse: std::ptr::null_mut(),
            batch: batch.batch() as i64,
            n_heads: n_heads as i64,
            n_kv_heads: hkv as i64,
            head_dim: hd as i64,
            capacity: capacity as i64,
            slots: slots as i64,
            q_row_stride: (n_heads * hd) as i64,
            o_row_stride: (n_heads * hd) as i64,
            max_new: batch.max_new as i64,
            num_splits: 1,
            scale,
            scale_log2: scale * std::f32::consts::LOG2_E,
            decode_counters: std::ptr::null_mut(),
        }
    }

    /// Causal attention of the batch's new tokens against the cache (which already holds them:
    /// call [`Gpu::kv_append`] first). `q [tokens, Hq * hd]` dense (roped), `out [tokens, Hq *
    /// hd]` dense; new token `i` of sequence `b` attends to cache rows `0 ..= starts[b] + i` of
    /// slot `slots[b]`, query head `h` to kv head `h / (Hq / Hkv)`, scale `1 / sqrt(hd)`.
    ///
    /// bf16/f16: the tensor-core kernels `attn_fwd_{bf16,f16}_hd{64,128}` (f32 accumulation), or
    /// on a compute capability 9.0 device the Hopper kernels of
    /// [`Gpu::attention_prefill_sm90_into`] (1.3-1.5x faster on an H200, 2026-11-27: 0.477 vs
    /// 0.722 ms at 7B L8192) unless [`ATTN_SM90_ENV`] is `0`; f32: the scalar kernel `attn_fwd_f32` (grid `(ceil(max_new / 4),
    /// Hq, batch)`, one warp per query row and head).
    pub fn attention_prefill_into<T: AttnDtype>(
        &self,
        q: &CudaSlice<T>,
        cache: &GpuKvCache<T>,
        batch: &AttnBatch,
        n_heads: usize,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let sm90 = T::HALF
            && std::env::var(ATTN_SM90_ENV).map_or(true, |v| v != "0")
            && self.attention_sm90_supported()?;
        let kind = if sm90 {
            PrefillKernel::Sm90
        } else {
            PrefillKernel::Mma
        };
        self.prefill_launch("attention_prefill", q, cache, batch, n_heads, out, kind)
    }

    /// Whether this device runs the Hopper prefill kernels: compute capability exactly 9.0 (the
    /// fatbin's sm_90a image runs on nothing else).
    pub fn attention_sm90_supported(&self) -> Result<bool> {
        let (major, minor) = self.compute_capability()?;
        Ok(major == 9 && minor == 0)
    }

    /// The device's compute capability (major, minor).
    fn compute_capability(&self) -> Result<(i32, i32)> {
        let get = |a, what: &str| {
            self.ctx
                .attribute(a)
                .map_err(|e| cuda_err(&format!("querying the compute capability {what}"), e))
        };
        Ok((
            get(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                "major",
            )?,
            get(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                "minor",
            )?,
        ))
    }

    /// [`Gpu::attention_prefill_into`] on the sm_80 tensor-core kernels `attn_fwd_{bf16,f16}_hd{64,128}`
    /// (mma.sync, f32 accumulation) on any device, Hopper too, whatever [`ATTN_SM90_ENV`] says:
    /// the same contract and validation; f32 runs the scalar kernel as there.
    pub fn attention_prefill_mma_into<T: AttnDtype>(
        &self,
        q: &CudaSlice<T>,
        cache: &GpuKvCache<T>,
        batch: &AttnBatch,
        n_heads: usize,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.prefill_launch(
            "attention_prefill_mma",
            q,
            cache,
            batch,
            n_heads,
            out,
            PrefillKernel::Mma,
        )
    }

    /// [`Gpu::attention_prefill_into`] on the Hopper kernels `attn_fwd_{bf16,f16}_hd{64,128}_sm90`
    /// (wgmma from shared memory, f32 accumulation; kernels/attention_prefill_sm90.cu), whatever
    /// [`ATTN_SM90_ENV`] says: the same contract and validation, bf16/f16 at head_dim 64 or 128
    /// only, and an error on a device that is not compute capability 9.0. Grid
    /// `(ceil(max_new / 128), Hq, batch)`, `ATTN_FWD_SM90_THREADS` threads,
    /// `ATTN_FWD_SM90_SMEM_HD{64,128}` bytes of dynamic shared memory.
    pub fn attention_prefill_sm90_into<T: AttnDtype>(
        &self,
        q: &CudaSlice<T>,
        cache: &GpuKvCache<T>,
        batch: &AttnBatch,
        n_heads: usize,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        const OP: &str = "attention_prefill_sm90";
        if !T::HALF {
            return Err(Error::invalid(format!(
                "{OP}: the Hopper prefill kernels take bf16 and f16 only, not {}",
                T::SUFFIX
            )));
        }
        let (major, minor) = self.compute_capability()?;
        if (major, minor) != (9, 0) {
            return Err(Error::invalid(format!(
                "{OP}: the Hopper prefill kernels need a compute capability 9.0 device \
                 (H100/H200); this one is {major}.{minor}"
            )));
        }
        self.prefill_launch(OP, q, cache, batch, n_heads, out, PrefillKernel::Sm90)
    }

    /// Validates and launches a prefill: the sm_80 or (with `sm90`, half types only) the Hopper
    /// tensor-core kernels, or the scalar f32 kernel.
    #[allow(clippy::too_many_arguments)]
    fn prefill_launch<T: AttnDtype>(
        &self,
        op_name: &str,
        q: &CudaSlice<T>,
        cache: &GpuKvCache<T>,
        batch: &AttnBatch,
        n_heads: usize,
        out: &mut CudaSlice<T>,
        kind: PrefillKernel,
    ) -> Result<()> {
        let scalar = kind == PrefillKernel::Scalar || !T::HALF;
        let (hkv, hd) = self.check_attn_common(op_name, cache, batch, n_heads, !scalar)?;
        let tokens = batch.tokens;
        let row = [("tokens", tokens), ("Hq * hd", n_heads * hd)];
        self.check_buf(op_name, "q", q, &row)?;
        self.check_buf(op_name, "out", out, &row)?;
        if n_heads > 65_535 {
            return Err(Error::invalid(format!(
                "{op_name}: {n_heads} query heads exceed the grid's y extent (65535)"
            )));
        }
        let sm90 = kind == PrefillKernel::Sm90;
        let (f, cfg) = if !scalar {
            let (smem, name, block_m, threads) = match (sm90, hd == 64) {
                (false, true) => (
                    ATTN_FWD_SMEM_HD64,
                    format!("attn_fwd_{}_hd64", T::SUFFIX),
                    ATTN_FWD_BLOCK_M,
                    ATTN_FWD_THREADS,
                ),
                (false, false) => (
                    ATTN_FWD_SMEM_HD128,
                    format!("attn_fwd_{}_hd128", T::SUFFIX),
                    ATTN_FWD_BLOCK_M,
                    ATTN_FWD_THREADS,
                ),
                (true, true) => (
                    ATTN_FWD_SM90_SMEM_HD64,
                    format!("attn_fwd_{}_hd64_sm90", T::SUFFIX),
                    ATTN_FWD_SM90_BLOCK_M,
                    ATTN_FWD_SM90_THREADS,
                ),
                (true, false) => (
                    ATTN_FWD_SM90_SMEM_HD128,
                    format!("attn_fwd_{}_hd128_sm90", T::SUFFIX),
                    ATTN_FWD_SM90_BLOCK_M,
                    ATTN_FWD_SM90_THREADS,
                ),
            };
            let f = self.function(&name)?;
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(|e| {
                cuda_err(
                    &format!("{op_name}: raising {name}'s dynamic shared memory to {smem} bytes"),
                    e,
                )
            })?;
            let cfg = LaunchConfig {
                grid_dim: (
                    batch.max_new.div_ceil(block_m as usize) as u32,
                    n_heads as u32,
                    batch.batch() as u32,
                ),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: smem,
            };
            (f, cfg)
        } else {
            let name = if T::HALF {
                format!("attn_fwd_ref_{}", T::SUFFIX)
            } else {
                "attn_fwd_f32".to_string()
            };
            let f = self.function(&name)?;
            let cfg = LaunchConfig {
                grid_dim: (
                    batch.max_new.div_ceil(4) as u32,
                    n_heads as u32,
                    batch.batch() as u32,
                ),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            (f, cfg)
        };

        let s = &self.stream;
        let (qp, _gq) = q.device_ptr(s);
        let (kcp, _gkc) = cache.keys.device_ptr(s);
        let (vcp, _gvc) = cache.values.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let (cup, _gcu) = batch.cu_seqlens.device_ptr(s);
        let (stp, _gst) = batch.seq_start.device_ptr(s);
        let (slp, _gsl) = batch.slot_idx.device_ptr(s);
        let p = Self::attn_params(
            qp,
            kcp,
            vcp,
            op,
            cup,
            stp,
            slp,
            batch,
            n_heads,
            hkv,
            hd,
            cache.slots,
            cache.capacity,
        );
        let mut b = s.launch_builder(&f);
        b.arg(&p);
        // SAFETY: the kernel reads q rows and writes out rows cu_seqlens[b] + i for i < lens[b]
        // (both buffers are exactly [tokens, Hq * hd] and the device arrays hold the validated
        // packing), reads cache rows (slots[b], 0 ..= starts[b] + i) with slots[b] < slots and
        // starts[b] + lens[b] <= capacity, validated against this cache; `out` is a `&mut`
        // borrow distinct from q and the cache. Guards are held until the launch is enqueued.
        // The sm90 kernels are only chosen on compute capability 9.0 (checked by the callers).
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err(&format!("launching {op_name}"), e))?;
        Ok(())
    }

    /// The scalar attention for any even head dim up to [`MAX_F32_HEAD_DIM`], in every dtype:
    /// the same contract as [`Gpu::attention_prefill_into`] (prefill and decode batches alike),
    /// one warp per query row and head, f32 math on `T`-stored inputs, no tensor cores. It is the
    /// path for head dims the fast kernels are not built for (the bundled tiny test models use 16
    /// and 32); at the model sizes it is far slower than the prefill and decode kernels.
    pub fn attention_reference_into<T: AttnDtype>(
        &self,
        q: &CudaSlice<T>,
        cache: &GpuKvCache<T>,
        batch: &AttnBatch,
        n_heads: usize,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.prefill_launch(
            "attention_reference",
            q,
            cache,
            batch,
            n_heads,
            out,
            PrefillKernel::Scalar,
        )
    }

    /// Split-KV decode: every sequence of `batch` has exactly one new token (already appended to
    /// the cache; `batch.is_decode()` must hold, else an error). `q [batch, Hq * hd]` dense
    /// (roped), `out [batch, Hq * hd]` dense; sequence `b` attends to cache rows
    /// `0 ..= starts[b]` of slot `slots[b]`.
    ///
    /// One launch by default: `attn_decode_fused_<T>_hd<hd>_g<gq>` (grid `(splits, Hkv *
    /// ceil(rep / gq), batch)`, `32 * warps` threads with the scratch's warp count, `warps * 24
    /// KB` of dynamic shared memory; each block streams one split of one kv head's K and V
    /// through per-warp cp.async rings once for `gq` of the `rep = Hq / Hkv` query heads sharing
    /// it). A sequence with one non-empty split writes `out` directly; otherwise each split
    /// writes its partial output and log-sum-exp into `scratch` and takes a ticket, and the last
    /// split of each (sequence, kv block) merges them into `out` and resets its counter.
    /// With [`ATTN_DECODE_ENV`]` = two_pass`: the previous two launches,
    /// `attn_decode_<T>_hd<hd>_g<gq>` (128 threads) then `attn_decode_combine_<T>` (grid `(Hq,
    /// batch)`, 256 threads).
    /// The split count is [`DecodeScratch::num_splits`]; on the device a sequence of `L` keys
    /// uses splits of `max(ceil(L / splits), 256)` keys (so a sequence far shorter than the
    /// scratch's `max_kv` uses only its first splits; the fused kernel's other splits exit at
    /// once, the two-pass kernel's write an empty partial). f32 at head dims other than 64 and
    /// 128 runs the scalar `attn_fwd_f32` kernel instead (scratch unused).
    pub fn attention_decode_into<T: AttnDtype>(
        &self,
        q: &CudaSlice<T>,
        cache: &GpuKvCache<T>,
        batch: &AttnBatch,
        n_heads: usize,
        scratch: &mut DecodeScratch,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        const OP: &str = "attention_decode";
        if !batch.is_decode() {
            return Err(Error::invalid(format!(
                "{OP}: every sequence must have exactly one new token, got lens {:?}; use \
                 attention_prefill_into",
                batch.lens
            )));
        }
        let (hkv, hd) = self.check_attn_common(OP, cache, batch, n_heads, true)?;
        let nb = batch.batch();
        let row = [("batch", nb), ("Hq * hd", n_heads * hd)];
        self.check_buf(OP, "q", q, &row)?;
        self.check_buf(OP, "out", out, &row)?;
        if hd != 64 && hd != 128 {
            // f32 only (check_head_dim rejects the rest): one new token is a prefill row.
            return self.attention_prefill_into(q, cache, batch, n_heads, out);
        }
        if scratch.batch != nb || scratch.n_heads != n_heads || scratch.head_dim != hd {
            return Err(Error::invalid(format!(
                "{OP}: scratch is for [batch={}, Hq={}, hd={}], the call is [batch={nb}, \
                 Hq={n_heads}, hd={hd}]",
                scratch.batch, scratch.n_heads, scratch.head_dim
            )));
        }
        let splits = scratch.num_splits(hkv);
        let rep = n_heads / hkv;
        let gq = decode_gq(rep);
        let kv_blocks = hkv * rep.div_ceil(gq);
        if kv_blocks > 65_535 || n_heads > i32::MAX as usize {
            return Err(Error::invalid(format!(
                "{OP}: Hkv {hkv} x {} head chunks exceed the grid's y extent (65535)",
                rep.div_ceil(gq)
            )));
        }
        let partial = [
            ("batch", nb),
            ("Hq", n_heads),
            ("splits", scratch.max_splits),
        ];
        self.check_buf(
            OP,
            "scratch partial_out",
            &scratch.partial_out,
            &[partial[0], partial[1], partial[2], ("hd", hd)],
        )?;
        self.check_buf(OP, "scratch partial_lse", &scratch.partial_lse, &partial)?;
        self.check_buf(
            OP,
            "scratch counters",
            &scratch.counters,
            &[("batch", nb), ("Hq", n_heads)],
        )?;
        // kv_blocks = Hkv * ceil(rep / gq) <= Hq: the counters [batch, Hq] cover [batch, kv_blocks].
        debug_assert!(kv_blocks <= n_heads);
        let two_pass = std::env::var(ATTN_DECODE_ENV).is_ok_and(|v| v == "two_pass");
        let warps = scratch.warps;
        let smem = warps * Self::decode_warp_smem();
        let (f, fc) = if two_pass {
            (
                self.function(&format!("attn_decode_{}_hd{hd}_g{gq}", T::SUFFIX))?,
                Some(self.function(&format!("attn_decode_combine_{}", T::SUFFIX))?),
            )
        } else {
            let name = format!("attn_decode_fused_{}_hd{hd}_g{gq}", T::SUFFIX);
            let f = self.function(&name)?;
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(|e| {
                cuda_err(
                    &format!("{OP}: raising {name}'s dynamic shared memory to {smem} bytes"),
                    e,
                )
            })?;
            (f, None)
        };

        let s = &self.stream;
        let (qp, _gq) = q.device_ptr(s);
        let (kcp, _gkc) = cache.keys.device_ptr(s);
        let (vcp, _gvc) = cache.values.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let (cup, _gcu) = batch.cu_seqlens.device_ptr(s);
        let (stp, _gst) = batch.seq_start.device_ptr(s);
        let (slp, _gsl) = batch.slot_idx.device_ptr(s);
        let (pop, _gpo) = scratch.partial_out.device_ptr_mut(s);
        let (plp, _gpl) = scratch.partial_lse.device_ptr_mut(s);
        let (ctp, _gct) = scratch.counters.device_ptr_mut(s);
        let mut p = Self::attn_params(
            qp,
            kcp,
            vcp,
            op,
            cup,
            stp,
            slp,
            batch,
            n_heads,
            hkv,
            hd,
            cache.slots,
            cache.capacity,
        );
        p.partial_out = pop as usize as *mut f32;
        p.partial_lse = plp as usize as *mut f32;
        p.num_splits = splits as i64;
        p.decode_counters = ctp as usize as *mut u32;
        let Some(fc) = fc else {
            let cfg = LaunchConfig {
                grid_dim: (splits as u32, kv_blocks as u32, nb as u32),
                block_dim: (32 * warps as u32, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            let mut b = s.launch_builder(&f);
            b.arg(&p);
            // SAFETY: block (split, kv block, b) reads q row cu_seqlens[b] = b (16-byte loads:
            // rows are Hq * hd with hd 64 or 128, cudarc buffers are 256-byte aligned), cache rows
            // (slots[b], 0 ..= starts[b]) of one kv head (validated against this cache; cp.async
            // of rows past the split reads nothing), writes partial_out / partial_lse entries
            // (b, h, split) with split < splits <= the scratch's max_splits (checked), counter
            // b * kv_blocks + kv block < batch * Hq (checked), and out row b (exactly [batch, Hq
            // * hd], checked). The dynamic shared memory was raised to `smem` above; the scratch
            // and out are `&mut` borrows; guards are held until the launch is enqueued.
            unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching attn_decode_fused", e))?;
            return Ok(());
        };
        let cfg = LaunchConfig {
            grid_dim: (splits as u32, kv_blocks as u32, nb as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&f);
        b.arg(&p);
        // SAFETY: block (split, kv block, b) reads q row cu_seqlens[b] = b (16-byte loads: rows
        // are Hq * hd with hd 64 or 128, and cudarc buffers are 256-byte aligned), cache rows
        // (slots[b], 0 ..= starts[b]) of one kv head (validated against this cache), and writes
        // partial_out / partial_lse entries (b, h, split) with split < splits <= the scratch's
        // max_splits (its buffers were checked for that). The scratch and out are `&mut`
        // borrows; guards are held until both launches are enqueued.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching attn_decode", e))?;
        let cfg = LaunchConfig {
            grid_dim: (n_heads as u32, nb as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(&fc);
        b.arg(&p);
        // SAFETY: reads the partials the previous launch wrote (same stream, so after it) for
        // (b, h, 0..splits) and writes out row b (exactly [batch, Hq * hd], checked).
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("launching attn_decode_combine", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rule() {
        // 7B b1 32768 (and 131072) cached: 66 splits x 2 kv heads = 132 blocks, one per SM.
        assert_eq!(decode_num_splits(1, 2, 32768, 132), 66);
        assert_eq!(decode_num_splits(1, 2, 131_072, 132), 66);
        // 7B b32 8192 cached: 2 splits (128 blocks), not 3 (192 blocks = 1.45 waves).
        assert_eq!(decode_num_splits(32, 2, 8192, 132), 2);
        // 0.5B-like GQA: b1, Hkv 2 with Hq 8.
        assert_eq!(decode_num_splits(1, 1, 32768, 132), 128);
        // Short sequences: one split, or as many as 256-key splits allow.
        assert_eq!(decode_num_splits(1, 2, 10, 132), 1);
        assert_eq!(decode_num_splits(1, 2, 1000, 132), 4);
        // A full wave already: one split.
        assert_eq!(decode_num_splits(64, 8, 100_000, 132), 1);
        assert!(decode_num_splits(1, 1, usize::MAX / 2, 132) <= DECODE_MAX_SPLITS);
        assert!(decode_num_splits(usize::MAX / 2, 8, usize::MAX / 2, 132) >= 1);
        // Every choice fills its waves at least as well as one split.
        for units in 1..300 {
            let s = decode_num_splits(units, 1, 1 << 20, 132);
            let eff = |s: usize| (units * s) as f64 / ((units * s).div_ceil(132) * 132) as f64;
            assert!(eff(s) >= eff(1), "units {units}: {s} splits");
        }
    }

    #[test]
    fn gq_covers_every_ratio() {
        for rep in 1..40 {
            let gq = decode_gq(rep);
            assert!([1, 2, 4, 6, 8].contains(&gq));
            assert!(gq >= rep.min(8));
        }
    }

    #[test]
    fn batch_validation() {
        assert!(check_batch_host("t", &[0, 1], &[3, 1], &[0, 5], 2, 8).is_ok());
        let dup = check_batch_host("t", &[1, 1], &[3, 1], &[0, 5], 2, 8).unwrap_err();
        assert!(dup.to_string().contains("slot 1"), "{dup}");
        let full = check_batch_host("t", &[0], &[4], &[5], 2, 8).unwrap_err();
        let m = full.to_string();
        assert!(
            m.contains("holds 5") && m.contains("4 more") && m.contains("8"),
            "{m}"
        );
        assert!(check_batch_host("t", &[2], &[1], &[0], 2, 8).is_err());
        assert!(check_batch_host("t", &[0], &[0], &[0], 2, 8).is_err());
        assert!(check_batch_host("t", &[], &[], &[], 2, 8).is_err());
        assert!(check_head_dim::<half::bf16>("t", 96).is_err());
        assert!(check_head_dim::<half::f16>("t", 128).is_ok());
        assert!(check_head_dim::<f32>("t", 16).is_ok());
        assert!(check_head_dim::<f32>("t", 15).is_err());
    }
}
