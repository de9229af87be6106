//! Parity against golden outputs of HF transformers (`reference.safetensors`, see python-ref/):
//! per-layer hidden states, prompt logits, and a greedy continuation with its logits.

use crate::error::{Error, Result};
use crate::model::{generate, Backend, HybridModel, Sampling};
use crate::tensor::{max_abs_diff, rel_l2, HostTensor};
use crate::weights::Checkpoint;
use std::fmt::Write as _;
use std::path::Path;

/// The golden outputs of one model, as written by python-ref/make_goldens.py.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Prompts, `[B][L]`.
    pub input_ids: Vec<Vec<u32>>,
    /// Logits of one forward over the prompts, `[B, L, V]`.
    pub logits: HostTensor,
    /// Output of layer i, `[B, L, d]`, for the layers the file holds.
    pub hidden_states: Vec<(usize, HostTensor)>,
    /// Greedy continuation, `[B][S]`.
    pub decode_ids: Vec<Vec<u32>>,
    /// Logits that chose each continuation token, `[B, S, V]`.
    pub decode_logits: Option<HostTensor>,
}

fn ids_2d(ckpt: &Checkpoint, name: &str) -> Result<Vec<Vec<u32>>> {
    let (shape, data) = ckpt.tensor_i64(name)?;
    let [b, l] = shape[..] else {
        return Err(Error::invalid(format!(
            "reference `{name}`: expected [B, L], found {shape:?}"
        )));
    };
    if data.iter().any(|&t| t < 0 || t > u32::MAX as i64) {
        return Err(Error::invalid(format!(
            "reference `{name}`: token id out of range"
        )));
    }
    Ok((0..b)
        .map(|i| data[i * l..(i + 1) * l].iter().map(|&t| t as u32).collect())
        .collect())
}

impl Reference {
    /// Reads a reference file. The file is a safetensors file opened through its folder's
    /// [`Checkpoint`] machinery so that corrupt files give named errors.
    pub fn load(path: &Path) -> Result<Self> {
        let ckpt = Checkpoint::open_file(path)?;
        let input_ids = ids_2d(&ckpt, "input_ids")?;
        let logits = ckpt.tensor_any_f32("logits")?;
        let mut layers: Vec<usize> = ckpt
            .names()
            .iter()
            .filter_map(|n| n.strip_prefix("hidden_states.")?.parse().ok())
            .collect();
        layers.sort_unstable();
        let hidden_states = layers
            .into_iter()
            .map(|i| Ok((i, ckpt.tensor_any_f32(&format!("hidden_states.{i}"))?)))
            .collect::<Result<_>>()?;
        let decode_ids = if ckpt.contains("decode_ids") {
            ids_2d(&ckpt, "decode_ids")?
        } else {
            Vec::new()
        };
        let decode_logits = if ckpt.contains("decode_logits") {
            Some(ckpt.tensor_any_f32("decode_logits")?)
        } else {
            None
        };
        Ok(Self {
            input_ids,
            logits,
            hidden_states,
            decode_ids,
            decode_logits,
        })
    }
}

/// One compared quantity.
#[derive(Debug, Clone)]
pub struct ParityRow {
    /// What was compared ("layer 3", "logits", "decode step 2 logits").
    pub name: String,
    /// Relative L2 error against the golden.
    pub rel_err: f64,
    /// Largest absolute difference.
    pub max_abs: f32,
}

/// The result of a parity run.
#[derive(Debug, Clone)]
pub struct ParityReport {
    /// Every comparison, in order.
    pub rows: Vec<ParityRow>,
    /// Golden greedy tokens, per prompt.
    pub expected_tokens: Vec<Vec<u32>>,
    /// Our greedy tokens, per prompt.
    pub tokens: Vec<Vec<u32>>,
}

impl ParityReport {
    /// Largest relative error of all rows (infinity when one was NaN).
    pub fn worst(&self) -> f64 {
        self.rows.iter().map(|r| r.rel_err).fold(0.0, f64::max)
    }

    /// True when the greedy tokens are identical.
    pub fn tokens_match(&self) -> bool {
        self.tokens == self.expected_tokens
    }

    /// True when every error is within `tol` and the tokens match.
    pub fn passes(&self, tol: f64) -> bool {
        self.rows.iter().all(|r| r.rel_err <= tol) && self.tokens_match()
    }

    /// A printable table.
    pub fn table(&self, tol: f64) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<28} {:>12} {:>12}",
            "compared", "rel L2 err", "max abs"
        );
        for r in &self.rows {
            let flag = if r.rel_err <= tol {
                ""
            } else {
                "  <-- over tolerance"
            };
            let _ = writeln!(
                s,
                "{:<28} {:>12.3e} {:>12.3e}{flag}",
                r.name, r.rel_err, r.max_abs
            );
        }
        for (i, (e, g)) in self.expected_tokens.iter().zip(&self.tokens).enumerate() {
            let ok = if e == g { "same" } else { "DIFFER" };
            let _ = writeln!(s, "decode seq {i}: golden {e:?}");
            let _ = writeln!(s, "decode seq {i}: ours   {g:?} ({ok})");
        }
        s
    }
}

fn row(name: String, ours: &[f32], golden: &[f32]) -> ParityRow {
    ParityRow {
        name,
        rel_err: rel_l2(ours, golden),
        max_abs: max_abs_diff(ours, golden).0,
    }
}

/// Runs the reference's prompts through `model` (one batched forward), compares per-layer hidden
/// states and logits, then decodes greedily as many steps as the reference holds and compares
/// tokens and logits.
pub fn run_parity<B: Backend>(model: &HybridModel<B>, r: &Reference) -> Result<ParityReport> {
    let prompts: Vec<&[u32]> = r.input_ids.iter().map(|p| p.as_slice()).collect();
    let total: usize = prompts.iter().map(|p| p.len()).sum();
    let vocab = model.config().vocab_size;
    if r.logits.len() != total * vocab {
        return Err(Error::invalid(format!(
            "reference logits have shape {:?}, the model gives [{total} tokens, {vocab}]",
            r.logits.shape
        )));
    }
    let out = model.prefill_all(&prompts, !r.hidden_states.is_empty())?;
    let mut rows = Vec::new();
    for (i, golden) in &r.hidden_states {
        let ours = out.hidden_states.get(*i).ok_or_else(|| {
            Error::invalid(format!(
                "reference holds hidden_states.{i} but the model has {} layers",
                out.hidden_states.len()
            ))
        })?;
        rows.push(row(format!("layer {i}"), &ours.data, &golden.data));
    }
    let logits = out.logits.expect("logits asked");
    rows.push(row("prompt logits".into(), &logits.data, &r.logits.data));

    let steps = r.decode_ids.first().map_or(0, |d| d.len());
    let mut tokens = vec![Vec::new(); r.input_ids.len()];
    if steps > 0 {
        let g = generate(model, &r.input_ids, steps, &Sampling::greedy(), &[], true)?;
        if let Some(dl) = &r.decode_logits {
            for s in 0..steps {
                let mut ours = Vec::new();
                let mut gold = Vec::new();
                for b in 0..r.input_ids.len() {
                    if let Some(l) = g.logits[b].get(s) {
                        ours.extend_from_slice(l);
                    }
                    let off = (b * steps + s) * vocab;
                    gold.extend_from_slice(dl.data.get(off..off + vocab).unwrap_or(&[]));
                }
                rows.push(row(format!("decode step {s} logits"), &ours, &gold));
            }
        }
        tokens = g.tokens;
    }
    Ok(ParityReport {
        rows,
        expected_tokens: r.decode_ids.clone(),
        tokens,
    })
}

/// Runs the same prompts through two models (say the GPU and the CPU backend) and compares every
/// layer's output and the logits of `a` against those of `b`.
pub fn compare_models<A: Backend, B: Backend>(
    a: &HybridModel<A>,
    b: &HybridModel<B>,
    prompts: &[&[u32]],
) -> Result<Vec<ParityRow>> {
    let oa = a.prefill_all(prompts, true)?;
    let ob = b.prefill_all(prompts, true)?;
    let mut rows: Vec<ParityRow> = oa
        .hidden_states
        .iter()
        .zip(&ob.hidden_states)
        .enumerate()
        .map(|(i, (x, y))| row(format!("layer {i}"), &x.data, &y.data))
        .collect();
    if let (Some(x), Some(y)) = (&oa.logits, &ob.logits) {
        rows.push(row("prompt logits".into(), &x.data, &y.data));
    }
    Ok(rows)
}
