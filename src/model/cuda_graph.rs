//! The decode step as a CUDA graph: recorded once, replayed every step.
//!
//! A decode step of a fixed set of slots launches the same kernels with the same sizes every
//! time; only the token ids and the positions (the tokens already cached) change, and every
//! kernel reads those from small device arrays of the [`CudaBatch`]. So the step is captured
//! once and replayed after rewriting those arrays in place, which removes the launch overhead
//! of a few hundred kernels per token.
//!
//! Capture needs the step to allocate nothing: the first (real) step runs with the backend's
//! allocator recording every buffer it hands out, and the capture, right after, replays that
//! allocator, so the graph bakes in buffers that stay alive as long as the [`DecodeGraph`].

use super::cuda_backend::{Arena, CudaBackend, CudaBatch, CudaTensor, ModelDtype};
use super::generate::{generate_with, Generation, Sampling, StepOutput};
use super::hybrid::{HybridCache, HybridModel, Logits};
use super::Backend;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use std::cell::RefCell;

/// Captures of one decode step tried before an invalidated capture is reported.
const CAPTURE_ATTEMPTS: usize = 3;
use std::rc::Rc;

/// A captured decode step for a fixed list of slots (one token each per step).
pub struct DecodeGraph<T: ModelDtype> {
    graph: CudaGraph,
    batch: CudaBatch<T>,
    logits: CudaTensor<T>,
    // The greedy token of each slot, written by an argmax kernel at the end of the graph.
    greedy: cudarc::driver::CudaSlice<i32>,
    // Owns the step's buffers, which the graph's kernels read and write.
    _arena: Rc<RefCell<Arena<T>>>,
    slots: Vec<usize>,
}

impl<T: ModelDtype> DecodeGraph<T> {
    /// The slots this graph steps, in order.
    pub fn slots(&self) -> &[usize] {
        &self.slots
    }
}

/// Restores the backend's allocator and ends a capture even when the step fails half-way.
struct CaptureGuard<'a, T: ModelDtype> {
    be: &'a CudaBackend<T>,
    capturing: bool,
}

impl<T: ModelDtype> Drop for CaptureGuard<'_, T> {
    fn drop(&mut self) {
        self.be.set_arena(None);
        if self.capturing {
            // A failed capture: end it so that the stream is usable again; the graph is dropped.
            let _ = self
                .be
                .gpu()
                .stream()
                .end_capture(CUgraphInstantiate_flags(0));
        }
    }
}

impl<T: ModelDtype> HybridModel<CudaBackend<T>> {
    /// Runs one decode step (`tokens[i]` continues the sequence in `slots[i]`) exactly as
    /// [`HybridModel::forward`] with [`Logits::Last`] does, returning its logits `[slots, V]`,
    /// and captures the step as a graph that [`HybridModel::replay_decode`] runs for the next
    /// steps of the same slots.
    pub fn capture_decode(
        &self,
        tokens: &[u32],
        slots: &[usize],
        cache: &mut HybridCache<CudaBackend<T>>,
    ) -> Result<(HostTensor, DecodeGraph<T>)> {
        let be = self.backend();
        let lists: Vec<&[u32]> = tokens.chunks(1).collect();
        let (batch, ids) = self.plan_step(&lists, slots, cache)?;
        let prepared = be.prepare_batch(&batch, &ids, cache.slots(), cache.capacity())?;

        // The real step, recording its allocations.
        let arena = CudaBackend::<T>::new_arena(true);
        let host = {
            let _guard = CaptureGuard {
                be,
                capturing: false,
            };
            be.set_arena(Some(arena.clone()));
            let logits = self
                .run_prepared(&prepared, &batch, &mut cache.layers, Logits::Last, None)?
                .ok_or_else(|| Error::Cuda("decode step returned no logits".into()))?;
            be.to_host(&logits)?
        };
        cache.advance(&batch);

        // The capture: the same launches on the same buffers; nothing runs. Another thread's
        // work on the same device (an implicitly synchronising call) can invalidate a capture
        // in progress; nothing ran, so such a capture is simply made again (a few times).
        let mut greedy = be.gpu().zeros::<i32>(slots.len())?;
        let mut attempt = 0;
        let (graph, logits) = loop {
            attempt += 1;
            match self.capture_step(&arena, &prepared, &batch, cache, &mut greedy) {
                Err(e)
                    if attempt < CAPTURE_ATTEMPTS
                        && e.to_string().contains("CAPTURE_INVALIDATED") =>
                {
                    continue
                }
                r => break r?,
            }
        };
        Ok((
            host,
            DecodeGraph {
                graph,
                batch: prepared,
                logits,
                greedy,
                _arena: arena,
                slots: slots.to_vec(),
            },
        ))
    }

    /// One capture of the step recorded in `arena` (see [`HybridModel::capture_decode`]), the
    /// greedy argmax of its logits into `greedy` included.
    fn capture_step(
        &self,
        arena: &Rc<RefCell<Arena<T>>>,
        prepared: &CudaBatch<T>,
        batch: &super::batch::SeqBatch,
        cache: &mut HybridCache<CudaBackend<T>>,
        greedy: &mut cudarc::driver::CudaSlice<i32>,
    ) -> Result<(CudaGraph, CudaTensor<T>)> {
        let be = self.backend();
        CudaBackend::<T>::arena_replay(arena);
        let stream = be.gpu().stream().clone();
        be.gpu().synchronize()?;
        let mut guard = CaptureGuard {
            be,
            capturing: false,
        };
        be.set_arena(Some(arena.clone()));
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| Error::Cuda(format!("starting the decode graph capture: {e:?}")))?;
        guard.capturing = true;
        let logits = self
            .run_prepared(prepared, batch, &mut cache.layers, Logits::Last, None)?
            .ok_or_else(|| Error::Cuda("decode step returned no logits".into()))?;
        let [rows, cols] = logits.shape();
        be.gpu()
            .argmax_rows_into(logits.view(), greedy, rows, cols)?;
        guard.capturing = false;
        let graph = stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(|e| Error::Cuda(format!("ending the decode graph capture: {e:?}")))?
            .ok_or_else(|| Error::Cuda("the decode graph capture recorded nothing".into()))?;
        drop(guard);
        Ok((graph, logits))
    }

    /// The next decode step of `graph`'s slots (`tokens[i]` for `graph.slots()[i]`), by
    /// replaying the captured graph: the same result as [`HybridModel::forward`] with
    /// [`Logits::Last`]. Returns the logits `[slots, V]`.
    pub fn replay_decode(
        &self,
        graph: &mut DecodeGraph<T>,
        tokens: &[u32],
        cache: &mut HybridCache<CudaBackend<T>>,
    ) -> Result<HostTensor> {
        self.replay(graph, tokens, cache)?;
        self.backend().to_host(&graph.logits)
    }

    /// [`HybridModel::replay_decode`] for greedy decoding: returns each slot's argmax token
    /// (computed on the device inside the graph, the first index on ties as
    /// [`super::generate::argmax`]), so that only `slots` ints come back instead of the
    /// `[slots, V]` logits.
    pub fn replay_decode_greedy(
        &self,
        graph: &mut DecodeGraph<T>,
        tokens: &[u32],
        cache: &mut HybridCache<CudaBackend<T>>,
    ) -> Result<Vec<u32>> {
        self.replay(graph, tokens, cache)?;
        let ids = self.backend().gpu().download(&graph.greedy)?;
        Ok(ids.into_iter().map(|i| i as u32).collect())
    }

    /// Rewrites the step's device inputs, launches the graph and advances the cache.
    fn replay(
        &self,
        graph: &mut DecodeGraph<T>,
        tokens: &[u32],
        cache: &mut HybridCache<CudaBackend<T>>,
    ) -> Result<()> {
        let be = self.backend();
        let lists: Vec<&[u32]> = tokens.chunks(1).collect();
        let slots = graph.slots.clone();
        let (batch, ids) = self.plan_step(&lists, &slots, cache)?;
        if graph.batch.cache_slots != cache.slots() || graph.batch.capacity != cache.capacity() {
            return Err(Error::invalid(
                "replay_decode: the graph was captured for another cache",
            ));
        }
        let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let gpu = be.gpu();
        gpu.stream()
            .memcpy_htod(&ids, &mut graph.batch.ids)
            .map_err(|e| Error::Cuda(format!("uploading the step's token ids: {e:?}")))?;
        gpu.attn_batch_update(
            &mut graph.batch.attn,
            &batch.slots,
            &batch.starts,
            cache.slots(),
            cache.capacity(),
        )?;
        graph.batch.seq = batch.clone();
        graph
            .graph
            .launch()
            .map_err(|e| Error::Cuda(format!("replaying the decode graph: {e:?}")))?;
        cache.advance(&batch);
        Ok(())
    }
}

impl<T: ModelDtype> HybridModel<CudaBackend<T>> {
    /// [`super::generate`] with every decode step replayed from a CUDA graph: captured at the
    /// first step and again whenever the set of live sequences changes (one stops at EOS).
    pub fn generate_graphed(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        sampling: &Sampling,
        eos: &[u32],
        keep_logits: bool,
    ) -> Result<Generation> {
        let mut graph: Option<DecodeGraph<T>> = None;
        // Greedy without kept logits: the argmax runs inside the graph and only the tokens
        // come back (at batch 32 and a 130k vocab that saves 16 MB of copy and a host scan).
        let greedy = sampling.temperature == 0.0 && !keep_logits;
        let mut step = |m: &HybridModel<CudaBackend<T>>,
                        tokens: &[u32],
                        slots: &[usize],
                        cache: &mut HybridCache<CudaBackend<T>>| {
            match graph.as_mut() {
                Some(g) if g.slots() == slots && greedy => m
                    .replay_decode_greedy(g, tokens, cache)
                    .map(StepOutput::Greedy),
                Some(g) if g.slots() == slots => {
                    m.replay_decode(g, tokens, cache).map(StepOutput::Logits)
                }
                _ => {
                    // Drop the old graph (and its buffers) before capturing the new one.
                    graph = None;
                    let (logits, g) = m.capture_decode(tokens, slots, cache)?;
                    graph = Some(g);
                    Ok(StepOutput::Logits(logits))
                }
            }
        };
        generate_with(
            self,
            prompts,
            max_new_tokens,
            sampling,
            eos,
            keep_logits,
            &mut step,
        )
    }
}
