//! The Falcon-H1 hybrid model, written once over [`Backend`]: every layer runs attention and the
//! Mamba-2 mixer side by side on the same normed input, then the SwiGLU MLP.

use super::backend::{AttnShape, Backend, MambaParams, SsdShape, StateKind};
use super::batch::SeqBatch;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use crate::weights::FoldedWeights;

/// One decoder layer's weights on the backend (multipliers already folded in). The projections
/// that read the same input are stacked into one matrix each, so that one GEMM makes them all.
struct Layer<B: Backend> {
    input_layernorm: B::Weight,
    pre_ff_layernorm: B::Weight,
    /// Rows `[q_proj | k_proj | v_proj | in_proj]`: `[Hq*hd + 2*Hkv*hd + in_proj_dim, d]`.
    in_fused: B::Weight,
    o_proj: B::Weight,
    conv_weight: B::Weight,
    conv_bias: Option<B::Weight>,
    dt_bias: B::Weight,
    a_log: B::Weight,
    d: B::Weight,
    norm: Option<B::Weight>,
    out_proj: B::Weight,
    /// Rows `[gate_proj | up_proj]`: `[2I, d]`.
    gate_up: B::Weight,
    down_proj: B::Weight,
}

/// One layer's cache: the KV cache plus the Mamba conv and SSM states, for every slot.
pub struct LayerCache<B: Backend> {
    /// Keys and values.
    pub kv: B::KvCache,
    /// Conv state `[C, K-1]` per slot: the last K-1 pre-conv xBC rows.
    pub conv: B::State,
    /// SSM state `[H, P, N]` per slot, f32.
    pub ssm: B::State,
}

/// The hybrid cache for a set of slots (KV + conv state + SSM state per layer), with the number of
/// tokens each slot has seen.
pub struct HybridCache<B: Backend> {
    /// Per-layer caches.
    pub layers: Vec<LayerCache<B>>,
    seq_lens: Vec<usize>,
    capacity: usize,
}

impl<B: Backend> HybridCache<B> {
    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.seq_lens.len()
    }
    /// Tokens seen by `slot` so far.
    pub fn seq_len(&self, slot: usize) -> usize {
        self.seq_lens.get(slot).copied().unwrap_or(0)
    }
    /// Most tokens one slot may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts a step's tokens as seen by their slots.
    pub(crate) fn advance(&mut self, batch: &SeqBatch) {
        for (i, &s) in batch.slots.iter().enumerate() {
            self.seq_lens[s] += batch.lens[i];
        }
    }
}

/// Which logits a forward returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every new token's logits: `[total_tokens, V]`.
    All,
    /// The last new token of each sequence: `[num_seqs, V]`.
    Last,
    /// None (a chunk of a long prefill whose logits nobody reads).
    None,
}

/// What a forward returns, on the host.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// Logits as asked by [`Logits`], `[rows, V]`, or `None`.
    pub logits: Option<HostTensor>,
    /// With `hidden_states`: the output of every layer, `[total_tokens, d]` each.
    pub hidden_states: Vec<HostTensor>,
}

/// Joins a layer's branches when dropped unless they were joined already (an early return).
struct JoinOnDrop<'a, B: Backend> {
    be: &'a B,
    done: bool,
}

impl<B: Backend> Drop for JoinOnDrop<'_, B> {
    fn drop(&mut self) {
        if !self.done {
            self.be.main_branch();
            // Best effort on an error path: the error being returned is the one that matters.
            let _ = self.be.join_branches();
        }
    }
}

/// [`Backend::split_cols`] into exactly `N` parts.
fn split_n<B: Backend, const N: usize>(
    be: &B,
    x: &B::Tensor,
    widths: [usize; N],
) -> Result<[B::Tensor; N]> {
    be.split_cols(x, &widths)?
        .try_into()
        .map_err(|parts: Vec<_>| {
            Error::invalid(format!(
                "split_cols gave {} parts for widths {widths:?}",
                parts.len()
            ))
        })
}

/// A Falcon-H1 model on backend `B`.
pub struct HybridModel<B: Backend> {
    cfg: Config,
    backend: B,
    embed_tokens: B::Weight,
    final_layernorm: B::Weight,
    lm_head: B::Weight,
    layers: Vec<Layer<B>>,
}

impl<B: Backend> HybridModel<B> {
    /// Moves folded weights onto the backend.
    pub fn new(backend: B, cfg: Config, weights: &FoldedWeights) -> Result<Self> {
        cfg.validate()?;
        let w = &**weights;
        if w.layers.len() != cfg.num_hidden_layers {
            return Err(Error::invalid(format!(
                "weights hold {} layers, config says {}",
                w.layers.len(),
                cfg.num_hidden_layers
            )));
        }
        let up = |t: &HostTensor| backend.weight(t);
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(Layer {
                input_layernorm: up(&l.input_layernorm)?,
                pre_ff_layernorm: up(&l.pre_ff_layernorm)?,
                in_fused: up(&l.input_projections()?)?,
                o_proj: up(&l.o_proj)?,
                conv_weight: up(&l.conv_weight)?,
                conv_bias: l.conv_bias.as_ref().map(up).transpose()?,
                dt_bias: up(&l.dt_bias)?,
                a_log: up(&l.a_log)?,
                d: up(&l.d)?,
                norm: l.norm.as_ref().map(up).transpose()?,
                out_proj: up(&l.out_proj)?,
                gate_up: up(&l.gate_up_proj()?)?,
                down_proj: up(&l.down_proj)?,
            });
        }
        Ok(Self {
            embed_tokens: up(&w.embed_tokens)?,
            final_layernorm: up(&w.final_layernorm)?,
            lm_head: up(&w.lm_head)?,
            layers,
            cfg,
            backend,
        })
    }

    /// A model of `cfg`'s shape with random weights made on the backend itself (no host copy of
    /// the weights, so that the 7B and 34B presets fit any host): matrices uniform in
    /// `±1/sqrt(in)`, norms around 1, `softplus(dt_bias)` in about [1e-3, 0.1], `A` in [-16, -1],
    /// `D` around 1, as [`crate::weights::ModelWeights::random`] draws them. Deterministic in
    /// `seed`; for benchmarks (the values are not a trained model's).
    pub fn random(backend: B, cfg: Config, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let next = std::cell::Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let rnd = |shape: &[usize], lo: f32, hi: f32| {
            next.set(next.get().wrapping_add(0x9E37_79B9_7F4A_7C15));
            backend.random_weight(shape, lo, hi, next.get())
        };
        let matrix = |out: usize, inp: usize| {
            let a = 1.0 / (inp as f32).sqrt();
            rnd(&[out, inp], -a, a)
        };
        let c = &cfg;
        let d = c.hidden_size;
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            layers.push(Layer {
                // The stacked projections: every part reads the same input of width d, so one
                // matrix of the whole shape draws each part from the same range.
                in_fused: matrix((hq + 2 * hkv) * hd + c.in_proj_dim(), d)?,
                o_proj: matrix(d, hq * hd)?,
                out_proj: matrix(d, c.mamba_d_ssm)?,
                gate_up: matrix(2 * c.intermediate_size, d)?,
                down_proj: matrix(d, c.intermediate_size)?,
                input_layernorm: rnd(&[d], 0.9, 1.1)?,
                pre_ff_layernorm: rnd(&[d], 0.9, 1.1)?,
                conv_weight: rnd(&[c.conv_dim(), c.mamba_d_conv], -0.5, 0.5)?,
                conv_bias: if c.mamba_conv_bias {
                    Some(rnd(&[c.conv_dim()], -0.1, 0.1)?)
                } else {
                    None
                },
                // softplus^-1 of 1e-3 and 0.1.
                dt_bias: rnd(&[c.mamba_n_heads], -6.9, -2.25)?,
                a_log: rnd(&[c.mamba_n_heads], 0.0, 16f32.ln())?,
                d: rnd(&[c.mamba_n_heads], 0.9, 1.1)?,
                norm: if c.mamba_rms_norm {
                    Some(rnd(&[c.mamba_d_ssm], 0.9, 1.1)?)
                } else {
                    None
                },
            });
        }
        let v = c.vocab_size;
        let embed_tokens = rnd(&[v, d], -1.0, 1.0)?;
        let final_layernorm = rnd(&[d], 0.9, 1.1)?;
        let a = 1.0 / (d as f32).sqrt();
        let lm_head = rnd(&[v, d], -a, a)?;
        Ok(Self {
            embed_tokens,
            final_layernorm,
            lm_head,
            layers,
            cfg,
            backend,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.cfg.num_attention_heads,
            n_kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    fn ssd_shape(&self) -> SsdShape {
        let (lo, hi) = self.cfg.time_step_limit;
        SsdShape {
            heads: self.cfg.mamba_n_heads,
            head_dim: self.cfg.mamba_d_head,
            groups: self.cfg.mamba_n_groups,
            state: self.cfg.mamba_d_state,
            chunk_size: self.cfg.mamba_chunk_size,
            dt_limit: (lo as f32, hi as f32),
        }
    }

    /// An empty cache of `slots` sequences holding at most `capacity` tokens each.
    pub fn new_cache(&self, slots: usize, capacity: usize) -> Result<HybridCache<B>> {
        if slots == 0 || capacity == 0 {
            return Err(Error::invalid(format!(
                "cache needs at least one slot and one token (asked {slots} slots, capacity {capacity})"
            )));
        }
        let c = &self.cfg;
        let conv_width = c.conv_dim() * (c.mamba_d_conv - 1);
        let ssm_width = c.mamba_n_heads * c.mamba_d_head * c.mamba_d_state;
        let layers = (0..c.num_hidden_layers)
            .map(|_| {
                Ok(LayerCache {
                    kv: self
                        .backend
                        .new_kv_cache(slots, capacity, self.attn_shape())?,
                    conv: self.backend.new_state(slots, conv_width, StateKind::Conv)?,
                    ssm: self.backend.new_state(slots, ssm_width, StateKind::Ssm)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(HybridCache {
            layers,
            seq_lens: vec![0; slots],
            capacity,
        })
    }

    /// Runs `tokens[i]` as the continuation of the sequence in cache slot `slots[i]` (a prefill when
    /// the slot is empty, a decode step for one token, a chunk of a long prefill otherwise), all in
    /// one packed batch. The cache grows by every token. Sequences may have different lengths.
    pub fn forward(
        &self,
        tokens: &[&[u32]],
        slots: &[usize],
        cache: &mut HybridCache<B>,
        logits: Logits,
        hidden_states: bool,
    ) -> Result<ForwardOutput> {
        let (batch, ids) = self.plan_step(tokens, slots, cache)?;
        let be = &self.backend;
        let prepared = be.prepare_batch(&batch, &ids, cache.slots(), cache.capacity)?;
        let mut hidden = Vec::new();
        let out = self.run_prepared(
            &prepared,
            &batch,
            &mut cache.layers,
            logits,
            hidden_states.then_some(&mut hidden),
        )?;
        cache.advance(&batch);
        Ok(ForwardOutput {
            logits: out.map(|t| be.to_host(&t)).transpose()?,
            hidden_states: hidden,
        })
    }

    /// Checks a step against the cache (slots in range, capacity, token ids), zeroes the states of
    /// slots that start a new sequence, and returns the batch layout and the packed ids.
    pub(crate) fn plan_step(
        &self,
        tokens: &[&[u32]],
        slots: &[usize],
        cache: &mut HybridCache<B>,
    ) -> Result<(SeqBatch, Vec<u32>)> {
        if tokens.len() != slots.len() {
            return Err(Error::invalid(format!(
                "forward: {} token lists for {} slots",
                tokens.len(),
                slots.len()
            )));
        }
        for &s in slots {
            if s >= cache.slots() {
                return Err(Error::invalid(format!(
                    "forward: slot {s} out of range for a cache of {} slots",
                    cache.slots()
                )));
            }
        }
        let batch = SeqBatch::new(
            slots.to_vec(),
            tokens.iter().map(|t| t.len()).collect(),
            slots.iter().map(|&s| cache.seq_lens[s]).collect(),
        )?;
        for (i, &s) in slots.iter().enumerate() {
            if batch.starts[i] + batch.lens[i] > cache.capacity {
                return Err(Error::invalid(format!(
                    "cache capacity exceeded: slot {s} holds {} tokens and {} more would pass its capacity of {}",
                    batch.starts[i], batch.lens[i], cache.capacity
                )));
            }
        }
        let ids: Vec<u32> = tokens.concat();
        let vocab = self.cfg.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is out of range for a vocabulary of {vocab}"
            )));
        }
        for (i, &s) in slots.iter().enumerate() {
            if batch.starts[i] == 0 {
                // A fresh sequence in a reused slot starts from zero states.
                for lc in cache.layers.iter_mut() {
                    self.backend.reset_state(&mut lc.conv, s)?;
                    self.backend.reset_state(&mut lc.ssm, s)?;
                }
            }
        }
        Ok((batch, ids))
    }

    /// Runs a prepared batch through every layer and the head, with no checks and no cache
    /// bookkeeping (see [`HybridModel::plan_step`] and [`HybridCache::advance`]); the logits stay
    /// on the backend. Launches only, so a backend can capture it as a graph.
    pub(crate) fn run_prepared(
        &self,
        prepared: &B::Batch,
        batch: &SeqBatch,
        layers: &mut [LayerCache<B>],
        logits: Logits,
        mut hidden: Option<&mut Vec<HostTensor>>,
    ) -> Result<Option<B::Tensor>> {
        let be = &self.backend;
        let mut h = be.embedding(&self.embed_tokens, prepared)?;
        for (layer, lc) in self.layers.iter().zip(layers.iter_mut()) {
            self.layer_forward(layer, lc, &mut h, prepared)?;
            if let Some(hs) = hidden.as_deref_mut() {
                hs.push(be.to_host(&h)?);
            }
        }
        match logits {
            Logits::None => Ok(None),
            mode => {
                let h = if mode == Logits::Last {
                    be.select_rows(&h, &batch.last_rows())?
                } else {
                    h
                };
                let n = be.rms_norm(&h, &self.final_layernorm, self.cfg.rms_norm_eps as f32)?;
                Ok(Some(be.linear(&n, &self.lm_head)?))
            }
        }
    }

    fn layer_forward(
        &self,
        l: &Layer<B>,
        lc: &mut LayerCache<B>,
        h: &mut B::Tensor,
        batch: &B::Batch,
    ) -> Result<()> {
        let be = &self.backend;
        let c = &self.cfg;
        let eps = c.rms_norm_eps as f32;
        let n = be.rms_norm(h, &l.input_layernorm, eps)?;

        // One GEMM for every projection of the normed input (rows [q | k | v | z | xBC | dt];
        // the multipliers are in the weights), on the main branch before the branches fork, so
        // that the side branch (which waits for everything issued before it) sees it. The parts
        // are column views of its output where the backend can (CUDA), copies otherwise (CPU);
        // `proj` and every view live until the branches are joined (or `joined` joins them).
        let shape = self.attn_shape();
        let (ds, conv_dim) = (c.mamba_d_ssm, c.conv_dim());
        let (q_cols, kv_cols) = (
            shape.n_heads * shape.head_dim,
            shape.n_kv_heads * shape.head_dim,
        );
        let proj = be.linear(&n, &l.in_fused)?;
        let widths = [q_cols, kv_cols, kv_cols, ds, conv_dim, c.mamba_n_heads];
        let [q, k, v, z, xbc, dt] = split_n(be, &proj, widths)?;

        // Attention branch (RoPE inside the attention op), issued first so that a backend with
        // two queues runs it beside the Mamba branch.
        be.side_branch()?;
        // Joins the branches if anything below returns early, before `proj`, its views and the
        // side branch's tensors are dropped.
        let mut joined = JoinOnDrop { be, done: false };
        let attn = be.attention(q, &k, &v, &mut lc.kv, batch, shape, c.rope_theta);
        be.main_branch();
        let attn = attn?;

        // Mamba-2 branch.
        let gn = c.mamba_n_groups * c.mamba_d_state;
        let xbc = be.conv1d_silu(
            &xbc,
            &l.conv_weight,
            l.conv_bias.as_ref(),
            &mut lc.conv,
            batch,
            c.mamba_d_conv,
        )?;
        let [x, bm, cm] = split_n(be, &xbc, [ds, gn, gn])?;
        let params = MambaParams {
            dt_bias: &l.dt_bias,
            a_log: &l.a_log,
            d: &l.d,
        };
        let y = be.ssd(
            &x,
            &dt,
            &bm,
            &cm,
            params,
            &mut lc.ssm,
            batch,
            self.ssd_shape(),
        )?;
        let y = be.gate_output(
            &y,
            &z,
            l.norm.as_ref(),
            c.mamba_n_groups,
            eps,
            c.mamba_norm_before_gate,
        )?;

        // Both branches add into the residual stream (HF sums them before adding: the order
        // differs only by rounding), the attention output once its branch is joined.
        be.linear_add(&y, &l.out_proj, h)?;
        joined.done = true;
        be.join_branches()?;
        be.linear_add(&attn, &l.o_proj, h)?;

        // SwiGLU MLP.
        let n2 = be.rms_norm(h, &l.pre_ff_layernorm, eps)?;
        let gate_up = be.linear(&n2, &l.gate_up)?;
        let [gate, up] = split_n(be, &gate_up, [c.intermediate_size; 2])?;
        let act = be.swiglu(&gate, &up)?;
        be.linear_add(&act, &l.down_proj, h)
    }

    /// One forward over whole prompts in a fresh cache; returns every token's logits
    /// (`[sum of lengths, V]`, prompt after prompt) and, when asked, every layer's output.
    pub fn prefill_all(&self, prompts: &[&[u32]], hidden_states: bool) -> Result<ForwardOutput> {
        let cap = prompts.iter().map(|p| p.len()).max().unwrap_or(0).max(1);
        let mut cache = self.new_cache(prompts.len().max(1), cap)?;
        let slots: Vec<usize> = (0..prompts.len()).collect();
        self.forward(prompts, &slots, &mut cache, Logits::All, hidden_states)
    }
}
