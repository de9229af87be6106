//! Token generation over the hybrid cache: greedy and sampled (temperature, top-k, top-p, seed).

use super::backend::Backend;
use super::hybrid::{HybridCache, HybridModel, Logits};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability adds up to at least p (1.0 = all).
    pub top_p: f32,
    /// Seed of the random generator, so that a sampled run can be repeated.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(format!(
                "temperature must be finite and >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// Index of the largest logit (the first one on ties, like torch.argmax). NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

/// Chooses the next token from one row of logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    if s.temperature == 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
    if idx.is_empty() {
        return 0;
    }
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.top_k > 0 && s.top_k < idx.len() {
        idx.truncate(s.top_k);
    }
    let max = logits[idx[0]] as f64;
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / s.temperature as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (j, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= s.top_p as f64 {
                keep = j + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let t: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= t);
    }
    let r: f64 = rng.random();
    let mut acc = 0.0;
    for (j, p) in probs.iter().enumerate() {
        acc += p;
        if r < acc {
            return idx[j] as u32;
        }
    }
    *idx.last().unwrap() as u32
}

/// What [`generate`] returns.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The new tokens of each prompt (without the prompt), at most `max_new_tokens` each.
    pub tokens: Vec<Vec<u32>>,
    /// With `keep_logits`: for each prompt, the logits row that chose each new token.
    pub logits: Vec<Vec<Vec<f32>>>,
    /// Seconds spent in the prefill.
    pub prefill_secs: f64,
    /// Seconds spent in the decode steps.
    pub decode_secs: f64,
}

/// Generates up to `max_new_tokens` for each prompt: one batched prefill of prompts of different
/// lengths, then batched one-token decode steps over the hybrid cache. A sequence stops early at
/// one of `eos` (the eos token is kept).
pub fn generate<B: Backend>(
    model: &HybridModel<B>,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    sampling: &Sampling,
    eos: &[u32],
    keep_logits: bool,
) -> Result<Generation> {
    let mut plain =
        |m: &HybridModel<B>, tokens: &[u32], slots: &[usize], cache: &mut HybridCache<B>| {
            let lists: Vec<&[u32]> = tokens.chunks(1).collect();
            let o = m.forward(&lists, slots, cache, Logits::Last, false)?;
            Ok(StepOutput::Logits(o.logits.expect("logits asked")))
        };
    generate_with(
        model,
        prompts,
        max_new_tokens,
        sampling,
        eos,
        keep_logits,
        &mut plain,
    )
}

/// What one decode step gives back.
#[derive(Debug, Clone)]
pub enum StepOutput {
    /// The logits `[slots, V]` (what [`HybridModel::forward`] with [`Logits::Last`] gives).
    Logits(HostTensor),
    /// Each slot's greedy token, chosen where the logits live (a device backend then copies
    /// back one int per slot). Only valid for greedy sampling without `keep_logits`.
    Greedy(Vec<u32>),
}

impl From<HostTensor> for StepOutput {
    fn from(t: HostTensor) -> Self {
        StepOutput::Logits(t)
    }
}

/// One decode step: `tokens[i]` continues the sequence in `slots[i]`.
pub type DecodeStep<'a, B> =
    dyn FnMut(&HybridModel<B>, &[u32], &[usize], &mut HybridCache<B>) -> Result<StepOutput> + 'a;

/// [`generate`] with the decode steps run by `step` (the CUDA backend replays a captured graph).
pub fn generate_with<B: Backend>(
    model: &HybridModel<B>,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    sampling: &Sampling,
    eos: &[u32],
    keep_logits: bool,
    step: &mut DecodeStep<'_, B>,
) -> Result<Generation> {
    sampling.validate()?;
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
        return Err(Error::invalid(
            "generate: every prompt needs at least one token",
        ));
    }
    let n = prompts.len();
    let capacity = prompts.iter().map(|p| p.len()).max().unwrap() + max_new_tokens;
    let mut cache = model.new_cache(n, capacity)?;
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    let mut out = Generation {
        tokens: vec![Vec::new(); n],
        logits: vec![Vec::new(); n],
        prefill_secs: 0.0,
        decode_secs: 0.0,
    };
    if max_new_tokens == 0 {
        return Ok(out);
    }
    let vocab = model.config().vocab_size;
    let t0 = std::time::Instant::now();
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let slots: Vec<usize> = (0..n).collect();
    let first = model.forward(&refs, &slots, &mut cache, Logits::Last, false)?;
    out.prefill_secs = t0.elapsed().as_secs_f64();
    let mut logits = StepOutput::Logits(first.logits.expect("logits asked"));
    let mut live: Vec<usize> = slots.clone();
    let t1 = std::time::Instant::now();
    loop {
        let mut next_live = Vec::new();
        let mut next_tokens = Vec::new();
        for (row, &s) in live.iter().enumerate() {
            let tok = match &logits {
                StepOutput::Logits(t) => {
                    let l = &t.data[row * vocab..(row + 1) * vocab];
                    if keep_logits {
                        out.logits[s].push(l.to_vec());
                    }
                    sample(l, sampling, &mut rng)
                }
                StepOutput::Greedy(ids) => {
                    if keep_logits || sampling.temperature != 0.0 || ids.len() != live.len() {
                        return Err(Error::invalid(
                            "generate: a step returned greedy tokens, but the run samples, keeps \
                             logits, or the token count differs from the live sequences",
                        ));
                    }
                    ids[row]
                }
            };
            out.tokens[s].push(tok);
            if out.tokens[s].len() < max_new_tokens && !eos.contains(&tok) {
                next_live.push(s);
                next_tokens.push(tok);
            }
        }
        if next_live.is_empty() {
            break;
        }
        logits = step(model, &next_tokens, &next_live, &mut cache)?;
        live = next_live;
    }
    out.decode_secs = t1.elapsed().as_secs_f64();
    Ok(out)
}
