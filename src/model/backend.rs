//! The operations the hybrid model needs from a compute backend. The model is written once over
//! this trait; the CPU reference ([`super::CpuBackend`]) and the CUDA backend implement it.

use super::batch::SeqBatch;
use crate::error::Result;
use crate::tensor::HostTensor;

/// Sizes of the attention branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads (Hq).
    pub n_heads: usize,
    /// Key/value heads (Hkv); `n_heads % n_kv_heads == 0`.
    pub n_kv_heads: usize,
    /// Head dimension (hd), from config.json (not hidden / heads).
    pub head_dim: usize,
}

/// Sizes and settings of the SSD scan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsdShape {
    /// Mamba heads (H).
    pub heads: usize,
    /// Channels per head (P).
    pub head_dim: usize,
    /// B/C groups (G); head h uses group h / (H/G).
    pub groups: usize,
    /// State size (N).
    pub state: usize,
    /// Chunk length of the chunked scan.
    pub chunk_size: usize,
    /// Clamp applied to dt after the softplus.
    pub dt_limit: (f32, f32),
}

/// Which per-slot state a buffer holds (a backend may store them in different dtypes: the CUDA
/// backend keeps the conv state in the activation dtype and the SSM state in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// The conv state `[C, K-1]` per slot.
    Conv,
    /// The SSM state `[H, P, N]` per slot.
    Ssm,
}

/// The per-head parameters of one Mamba mixer, resident on the backend.
pub struct MambaParams<'a, W> {
    /// dt bias [H].
    pub dt_bias: &'a W,
    /// A_log [H]; A = -exp(A_log).
    pub a_log: &'a W,
    /// Skip [H].
    pub d: &'a W,
}

/// A compute backend: where tensors live and how each op runs.
///
/// Activations are 2-D `[rows, cols]`, row-major, token-major: one row per token of a packed
/// [`SeqBatch`]. Weights are HF-layout `[out, in]` matrices or 1-D vectors.
pub trait Backend {
    /// An activation tensor `[rows, cols]`.
    type Tensor;
    /// A weight (matrix `[out, in]` or vector) resident on the backend.
    type Weight;
    /// One layer's KV cache for every slot.
    type KvCache;
    /// A per-slot state buffer (one layer's conv state or SSM state for every slot).
    type State;
    /// One forward's batch as the backend's ops read it (the CUDA backend keeps the token ids,
    /// the sequence layout and the scan's chunk table on the device, made once per forward).
    type Batch;

    /// A short name for messages ("cpu", "cuda:0").
    fn name(&self) -> String;

    /// Moves a host tensor (already folded, f32) onto the backend.
    fn weight(&self, t: &HostTensor) -> Result<Self::Weight>;

    /// A weight of `shape` filled with values drawn uniformly from `[lo, hi)` (for benchmarks
    /// and tests of model shapes whose real weights are not at hand). Deterministic in `seed`.
    fn random_weight(&self, shape: &[usize], lo: f32, hi: f32, seed: u64) -> Result<Self::Weight> {
        let n: usize = shape.iter().product();
        let data = crate::tensor::uniform_values(n, lo, hi, seed);
        self.weight(&HostTensor::new(shape.to_vec(), data)?)
    }

    /// Starts the attention branch of a layer: the ops issued from here until
    /// [`Backend::main_branch`] may run concurrently with those issued after it, until
    /// [`Backend::join_branches`]. The default (a backend with one queue) does nothing.
    fn side_branch(&self) -> Result<()> {
        Ok(())
    }

    /// Ops issued from here go to the main branch again (see [`Backend::side_branch`]).
    fn main_branch(&self) {}

    /// Waits, on the main branch, for everything issued on the side branch.
    fn join_branches(&self) -> Result<()> {
        Ok(())
    }

    /// Prepares the batch of one forward: `batch` is the layout (already validated against the
    /// cache by the model), `ids` the packed token ids (each `< vocab`), `cache_slots` and
    /// `capacity` the cache's dimensions.
    fn prepare_batch(
        &self,
        batch: &SeqBatch,
        ids: &[u32],
        cache_slots: usize,
        capacity: usize,
    ) -> Result<Self::Batch>;

    /// `table[ids]` for the batch's token ids: `[tokens, dim]` from a `[vocab, dim]` table.
    fn embedding(&self, table: &Self::Weight, batch: &Self::Batch) -> Result<Self::Tensor>;

    /// `x W^T`: `[rows, out]` from `x [rows, in]` and `w [out, in]`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Weight) -> Result<Self::Tensor>;

    /// RMSNorm of each row of `x [rows, d]` times `w [d]`.
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Weight, eps: f32) -> Result<Self::Tensor>;

    /// `x += y`, both `[rows, cols]`.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;

    /// `out += x W^T` (a projection straight into the residual stream). The default runs
    /// [`Backend::linear`] then [`Backend::add_assign`]; a backend may fuse them.
    fn linear_add(&self, x: &Self::Tensor, w: &Self::Weight, out: &mut Self::Tensor) -> Result<()> {
        let y = self.linear(x, w)?;
        self.add_assign(out, &y)
    }

    /// Splits `x [rows, sum(widths)]` into column blocks `[rows, widths[i]]`.
    fn split_cols(&self, x: &Self::Tensor, widths: &[usize]) -> Result<Vec<Self::Tensor>>;

    /// Selects rows of `x`: `[rows.len(), cols]`.
    fn select_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;

    /// SwiGLU: `up * silu(gate)`, both `[rows, I]`.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;

    /// The Mamba output gate on `y, z [rows, Ds]`: with `norm` the gated group RMSNorm (group size
    /// Ds / groups, gate before or after the norm), without it `y * silu(z)`.
    fn gate_output(
        &self,
        y: &Self::Tensor,
        z: &Self::Tensor,
        norm: Option<&Self::Weight>,
        groups: usize,
        eps: f32,
        norm_before_gate: bool,
    ) -> Result<Self::Tensor>;

    /// An empty KV cache for `slots` sequences of at most `capacity` tokens each.
    fn new_kv_cache(
        &self,
        slots: usize,
        capacity: usize,
        shape: AttnShape,
    ) -> Result<Self::KvCache>;

    /// A zeroed state of `width` values for each of `slots` sequences.
    fn new_state(&self, slots: usize, width: usize, kind: StateKind) -> Result<Self::State>;

    /// Zeroes the state of one slot (a new sequence reuses it).
    fn reset_state(&self, state: &mut Self::State, slot: usize) -> Result<()>;

    /// Applies NeoX RoPE (`rope_theta`) at each token's position to `q [tokens, Hq*hd]` and
    /// `k [tokens, Hkv*hd]`, appends `k` and `v` to each sequence's cache, then computes causal GQA
    /// attention of `q` against everything cached for that sequence: `[tokens, Hq*hd]`. Errors
    /// when a sequence would exceed the cache capacity.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        cache: &mut Self::KvCache,
        batch: &Self::Batch,
        shape: AttnShape,
        rope_theta: f64,
    ) -> Result<Self::Tensor>;

    /// Causal depthwise conv1d + bias + SiLU of `x [tokens, C]` with weight `[C, K]`, continuing
    /// each sequence from its conv state (`[C, K-1]` per slot, the last K-1 inputs) and updating it.
    fn conv1d_silu(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        bias: Option<&Self::Weight>,
        state: &mut Self::State,
        batch: &Self::Batch,
        width: usize,
    ) -> Result<Self::Tensor>;

    /// The SSD scan with the D skip: `x [tokens, H*P]`, raw `dt [tokens, H]`, `b, c [tokens, G*N]`;
    /// each sequence continues from its SSM state (`[H, P, N]` per slot) and leaves its final
    /// state there. Returns `y [tokens, H*P]`.
    #[allow(clippy::too_many_arguments)]
    fn ssd(
        &self,
        x: &Self::Tensor,
        dt: &Self::Tensor,
        b: &Self::Tensor,
        c: &Self::Tensor,
        params: MambaParams<'_, Self::Weight>,
        state: &mut Self::State,
        batch: &Self::Batch,
        shape: SsdShape,
    ) -> Result<Self::Tensor>;

    /// The most device memory in use at once so far, in bytes, where the backend can tell (the
    /// GPU); `None` otherwise.
    fn peak_memory(&self) -> Option<u64> {
        None
    }

    /// Copies a tensor to the host as f32 `[rows, cols]`.
    fn to_host(&self, x: &Self::Tensor) -> Result<HostTensor>;
}
