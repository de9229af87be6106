//! The CPU reference backend: f32 host tensors, every op from [`crate::cpu`].

use super::backend::{AttnShape, Backend, MambaParams, SsdShape, StateKind};
use super::batch::SeqBatch;
use crate::cpu;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use rayon::prelude::*;

/// The f32 CPU backend. Stateless: tensors are [`HostTensor`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

/// KV cache of one layer on the CPU: per slot, keys and values `[len, Hkv * hd]`.
#[derive(Debug, Clone)]
pub struct CpuKvCache {
    capacity: usize,
    shape: AttnShape,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl CpuKvCache {
    /// Tokens cached for `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.keys.get(slot).map_or(0, |k| {
            k.len() / (self.shape.n_kv_heads * self.shape.head_dim)
        })
    }
}

/// One forward's batch on the CPU: the layout and the token ids.
#[derive(Debug, Clone)]
pub struct CpuBatch {
    /// The packed layout.
    pub seq: SeqBatch,
    /// Token ids, packed.
    pub ids: Vec<u32>,
}

/// Per-slot state on the CPU: `slots * width` values.
#[derive(Debug, Clone)]
pub struct CpuState {
    width: usize,
    data: Vec<f32>,
}

impl CpuState {
    fn slot(&self, slot: usize) -> Result<&[f32]> {
        self.data
            .get(slot * self.width..(slot + 1) * self.width)
            .ok_or_else(|| Error::invalid(format!("state: slot {slot} out of range")))
    }
    fn slot_mut(&mut self, slot: usize) -> Result<&mut [f32]> {
        let w = self.width;
        self.data
            .get_mut(slot * w..(slot + 1) * w)
            .ok_or_else(|| Error::invalid(format!("state: slot {slot} out of range")))
    }
}

fn dims2(t: &HostTensor, what: &str) -> Result<(usize, usize)> {
    match t.shape[..] {
        [r, c] => Ok((r, c)),
        _ => Err(Error::invalid(format!(
            "{what}: expected a 2-D tensor, found shape {:?}",
            t.shape
        ))),
    }
}

fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> Result<HostTensor> {
    HostTensor::new(vec![rows, cols], data)
}

fn same_shape(op: &str, a: &HostTensor, b: &HostTensor) -> Result<()> {
    if a.shape != b.shape {
        return Err(Error::invalid(format!(
            "{op}: shapes differ: {:?} and {:?}",
            a.shape, b.shape
        )));
    }
    Ok(())
}

/// Rows `[cu[i], cu[i+1])` of a `[rows, cols]` slice.
fn seq_rows<'a>(data: &'a [f32], cols: usize, cu: &[usize], i: usize) -> &'a [f32] {
    &data[cu[i] * cols..cu[i + 1] * cols]
}

impl Backend for CpuBackend {
    type Tensor = HostTensor;
    type Weight = HostTensor;
    type KvCache = CpuKvCache;
    type State = CpuState;
    type Batch = CpuBatch;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn weight(&self, t: &HostTensor) -> Result<HostTensor> {
        Ok(t.clone())
    }

    fn prepare_batch(
        &self,
        batch: &SeqBatch,
        ids: &[u32],
        _cache_slots: usize,
        _capacity: usize,
    ) -> Result<CpuBatch> {
        if ids.len() != batch.total_tokens() {
            return Err(Error::invalid(format!(
                "batch: {} token ids for a layout of {} tokens",
                ids.len(),
                batch.total_tokens()
            )));
        }
        Ok(CpuBatch {
            seq: batch.clone(),
            ids: ids.to_vec(),
        })
    }

    fn embedding(&self, table: &HostTensor, batch: &CpuBatch) -> Result<HostTensor> {
        let (_, dim) = dims2(table, "embedding table")?;
        let ids = &batch.ids;
        tensor(ids.len(), dim, cpu::embedding(ids, &table.data, dim, 1.0)?)
    }

    fn linear(&self, x: &HostTensor, w: &HostTensor) -> Result<HostTensor> {
        let (rows, in_dim) = dims2(x, "linear input")?;
        let (out_dim, w_in) = dims2(w, "linear weight")?;
        if w_in != in_dim {
            return Err(Error::invalid(format!(
                "linear: input [{rows}, {in_dim}] does not match weight [{out_dim}, {w_in}]"
            )));
        }
        tensor(
            rows,
            out_dim,
            cpu::linear(&x.data, &w.data, rows, in_dim, out_dim)?,
        )
    }

    fn rms_norm(&self, x: &HostTensor, w: &HostTensor, eps: f32) -> Result<HostTensor> {
        let (rows, cols) = dims2(x, "rms_norm input")?;
        tensor(rows, cols, cpu::rms_norm(&x.data, &w.data, eps)?)
    }

    fn add_assign(&self, x: &mut HostTensor, y: &HostTensor) -> Result<()> {
        same_shape("add", x, y)?;
        x.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn split_cols(&self, x: &HostTensor, widths: &[usize]) -> Result<Vec<HostTensor>> {
        let (rows, cols) = dims2(x, "split_cols input")?;
        if widths.iter().sum::<usize>() != cols {
            return Err(Error::invalid(format!(
                "split_cols: widths {widths:?} do not add up to {cols} columns"
            )));
        }
        let mut out: Vec<Vec<f32>> = widths
            .iter()
            .map(|w| Vec::with_capacity(rows * w))
            .collect();
        for row in x.data.chunks_exact(cols) {
            let mut off = 0;
            for (o, &w) in out.iter_mut().zip(widths) {
                o.extend_from_slice(&row[off..off + w]);
                off += w;
            }
        }
        out.into_iter()
            .zip(widths)
            .map(|(d, &w)| tensor(rows, w, d))
            .collect()
    }

    fn select_rows(&self, x: &HostTensor, rows: &[usize]) -> Result<HostTensor> {
        let (n, cols) = dims2(x, "select_rows input")?;
        let mut out = Vec::with_capacity(rows.len() * cols);
        for &r in rows {
            if r >= n {
                return Err(Error::invalid(format!(
                    "select_rows: row {r} out of range for {n} rows"
                )));
            }
            out.extend_from_slice(&x.data[r * cols..(r + 1) * cols]);
        }
        tensor(rows.len(), cols, out)
    }

    fn swiglu(&self, gate: &HostTensor, up: &HostTensor) -> Result<HostTensor> {
        same_shape("swiglu", gate, up)?;
        let (rows, cols) = dims2(gate, "swiglu gate")?;
        tensor(rows, cols, cpu::swiglu(&gate.data, &up.data)?)
    }

    fn gate_output(
        &self,
        y: &HostTensor,
        z: &HostTensor,
        norm: Option<&HostTensor>,
        groups: usize,
        eps: f32,
        norm_before_gate: bool,
    ) -> Result<HostTensor> {
        same_shape("gate_output", y, z)?;
        let (rows, cols) = dims2(y, "gate_output y")?;
        let out = match norm {
            Some(w) => {
                cpu::gated_rms_norm(&y.data, &z.data, &w.data, groups, eps, norm_before_gate)?
            }
            None => cpu::silu_gate(&y.data, &z.data)?,
        };
        tensor(rows, cols, out)
    }

    fn new_kv_cache(&self, slots: usize, capacity: usize, shape: AttnShape) -> Result<CpuKvCache> {
        Ok(CpuKvCache {
            capacity,
            shape,
            keys: vec![Vec::new(); slots],
            values: vec![Vec::new(); slots],
        })
    }

    fn new_state(&self, slots: usize, width: usize, _kind: StateKind) -> Result<CpuState> {
        Ok(CpuState {
            width,
            data: vec![0.0; slots * width],
        })
    }

    fn reset_state(&self, state: &mut CpuState, slot: usize) -> Result<()> {
        state.slot_mut(slot)?.fill(0.0);
        Ok(())
    }

    fn attention(
        &self,
        mut q: HostTensor,
        k: &HostTensor,
        v: &HostTensor,
        cache: &mut CpuKvCache,
        batch: &CpuBatch,
        shape: AttnShape,
        rope_theta: f64,
    ) -> Result<HostTensor> {
        let batch = &batch.seq;
        let kv_cols = shape.n_kv_heads * shape.head_dim;
        let q_cols = shape.n_heads * shape.head_dim;
        let (rows, qc) = dims2(&q, "attention q")?;
        if qc != q_cols || k.shape != [rows, kv_cols] || v.shape != [rows, kv_cols] {
            return Err(Error::invalid(format!(
                "attention: q {:?}, k {:?}, v {:?} do not match {} tokens with Hq*hd = {q_cols}, Hkv*hd = {kv_cols}",
                q.shape, k.shape, v.shape, rows
            )));
        }
        if shape != cache.shape {
            return Err(Error::invalid(
                "attention: cache built for other head sizes",
            ));
        }
        let cu = batch.cu_seqlens();
        if cu[batch.num_seqs()] != rows {
            return Err(Error::invalid(format!(
                "attention: batch has {} tokens but q has {rows} rows",
                cu[batch.num_seqs()]
            )));
        }
        let positions = batch.positions();
        let (hq, hkv, hd) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
        cpu::rope_neox(&mut q.data, &positions, hq, hd, rope_theta)?;
        let mut k = k.clone();
        cpu::rope_neox(&mut k.data, &positions, hkv, hd, rope_theta)?;
        // Append first (sequentially: slots are distinct), then attend in parallel.
        for (i, &slot) in batch.slots.iter().enumerate() {
            let have = cache.len(slot);
            if slot >= cache.keys.len() {
                return Err(Error::invalid(format!(
                    "attention: slot {slot} out of range for a cache of {} slots",
                    cache.keys.len()
                )));
            }
            if have != batch.starts[i] {
                return Err(Error::invalid(format!(
                    "attention: slot {slot} holds {have} tokens but the batch says {}",
                    batch.starts[i]
                )));
            }
            if have + batch.lens[i] > cache.capacity {
                return Err(Error::invalid(format!(
                    "KV cache capacity exceeded: slot {slot} holds {have} tokens, {} more would pass the capacity of {}",
                    batch.lens[i], cache.capacity
                )));
            }
            cache.keys[slot].extend_from_slice(seq_rows(&k.data, kv_cols, &cu, i));
            cache.values[slot].extend_from_slice(seq_rows(&v.data, kv_cols, &cu, i));
        }
        let dims = cpu::AttnDims {
            n_heads: shape.n_heads,
            n_kv_heads: shape.n_kv_heads,
            head_dim: shape.head_dim,
        };
        let outs: Vec<Vec<f32>> = (0..batch.num_seqs())
            .into_par_iter()
            .map(|i| {
                let slot = batch.slots[i];
                cpu::causal_attention(
                    seq_rows(&q.data, q_cols, &cu, i),
                    &cache.keys[slot],
                    &cache.values[slot],
                    batch.starts[i],
                    dims,
                )
            })
            .collect::<Result<_>>()?;
        tensor(rows, q_cols, outs.concat())
    }

    fn conv1d_silu(
        &self,
        x: &HostTensor,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        state: &mut CpuState,
        batch: &CpuBatch,
        width: usize,
    ) -> Result<HostTensor> {
        let batch = &batch.seq;
        let (rows, channels) = dims2(x, "conv1d input")?;
        let cu = batch.cu_seqlens();
        if cu[batch.num_seqs()] != rows {
            return Err(Error::invalid(format!(
                "conv1d: batch has {} tokens but x has {rows} rows",
                cu[batch.num_seqs()]
            )));
        }
        let mut out = Vec::with_capacity(rows * channels);
        for (i, &slot) in batch.slots.iter().enumerate() {
            let (y, new_state) = cpu::causal_conv1d(
                seq_rows(&x.data, channels, &cu, i),
                &weight.data,
                bias.map(|b| b.data.as_slice()),
                Some(state.slot(slot)?),
                channels,
                width,
                true,
            )?;
            state.slot_mut(slot)?.copy_from_slice(&new_state);
            out.extend_from_slice(&y);
        }
        tensor(rows, channels, out)
    }

    fn ssd(
        &self,
        x: &HostTensor,
        dt: &HostTensor,
        b: &HostTensor,
        c: &HostTensor,
        params: MambaParams<'_, HostTensor>,
        state: &mut CpuState,
        batch: &CpuBatch,
        shape: SsdShape,
    ) -> Result<HostTensor> {
        let batch = &batch.seq;
        let (h, p, g, n) = (shape.heads, shape.head_dim, shape.groups, shape.state);
        let (rows, _) = dims2(x, "ssd x")?;
        let cu = batch.cu_seqlens();
        if cu[batch.num_seqs()] != rows {
            return Err(Error::invalid(format!(
                "ssd: batch has {} tokens but x has {rows} rows",
                cu[batch.num_seqs()]
            )));
        }
        let mut out = Vec::with_capacity(rows * h * p);
        for (i, &slot) in batch.slots.iter().enumerate() {
            let inputs = cpu::SsdInputs {
                x: seq_rows(&x.data, h * p, &cu, i),
                dt: seq_rows(&dt.data, h, &cu, i),
                dt_bias: &params.dt_bias.data,
                a_log: &params.a_log.data,
                b: seq_rows(&b.data, g * n, &cu, i),
                c: seq_rows(&c.data, g * n, &cu, i),
                d: Some(&params.d.data),
                dt_limit: shape.dt_limit,
                initial_state: Some(state.slot(slot)?),
            };
            let dims = cpu::SsdDims {
                seqlen: batch.lens[i],
                heads: h,
                head_dim: p,
                groups: g,
                state: n,
            };
            // One token is the decode step: the plain recurrence is the state update.
            let (y, fin) = if batch.lens[i] == 1 {
                cpu::ssd_recurrent(&inputs, dims)?
            } else {
                cpu::ssd_chunked(&inputs, dims, shape.chunk_size)?
            };
            state.slot_mut(slot)?.copy_from_slice(&fin);
            out.extend_from_slice(&y);
        }
        tensor(rows, h * p, out)
    }

    fn to_host(&self, x: &HostTensor) -> Result<HostTensor> {
        Ok(x.clone())
    }
}
