//! Parity against golden outputs of HF transformers (`reference.safetensors`, see python-ref/):
//! per-layer hidden states, prompt logits, and a greedy continuation with its logits.

use crate::error::{Error, Result};
use crate::model::{generate, Backend, HybridModel, Logits, Sampling};
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

/// The bf16 tolerance this crate holds itself to: 2e-2 relative L2 per compared quantity.
pub const BF16_TOLERANCE: f64 = 2e-2;

/// The bf16 tolerance for the model in `model_dir`: [`BF16_TOLERANCE`], or HF transformers' own
/// bf16 error on that model when it is larger (`hf_bf16.json`, written by
/// python-ref/bf16_baseline.py: the tiny models' small widths leave bf16 rounding little to
/// average over, and HF's bf16 forward is the implementation a user would otherwise run).
pub fn bf16_tolerance(model_dir: &Path) -> f64 {
    let hf = std::fs::read_to_string(model_dir.join("hf_bf16.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("worst_rel_err")?.as_f64());
    hf.map_or(BF16_TOLERANCE, |e| e.max(BF16_TOLERANCE))
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
    /// Our greedy choice at each decode step, fed the golden tokens so far (teacher-forced, as
    /// the `decode step s logits` rows are), per prompt.
    pub tokens: Vec<Vec<u32>>,
    /// Our own greedy continuation (each step fed our previous choice), per prompt: equal to
    /// the golden one unless a step was a near tie.
    pub free_tokens: Vec<Vec<u32>>,
    /// Steps where our choice differs from the golden one although the golden's top-2 logit
    /// margin is smaller than twice our largest logit error at that step, so that rounding (of
    /// bf16, say) may legitimately flip it. HF's own bf16 forward flips such steps too
    /// (python-ref/bf16_baseline.py). They do not fail [`ParityReport::tokens_match`].
    pub near_ties: Vec<NearTie>,
}

/// A decode step whose golden choice is within our error of its runner-up (see
/// [`ParityReport::near_ties`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NearTie {
    /// Prompt index.
    pub seq: usize,
    /// Decode step.
    pub step: usize,
    /// Golden logit of the golden token minus that of the runner-up.
    pub margin: f32,
    /// Our largest absolute logit error at that step.
    pub max_abs: f32,
}

impl ParityReport {
    /// Largest relative error of all rows (infinity when one was NaN).
    pub fn worst(&self) -> f64 {
        self.rows.iter().map(|r| r.rel_err).fold(0.0, f64::max)
    }

    /// True when our greedy choice equals the golden one at every decode step (teacher-forced),
    /// near ties aside.
    pub fn tokens_match(&self) -> bool {
        self.expected_tokens.iter().enumerate().all(|(b, want)| {
            let got = self.tokens.get(b).map_or(&[][..], |t| t.as_slice());
            got.len() == want.len()
                && want.iter().zip(got).enumerate().all(|(s, (w, g))| {
                    w == g || self.near_ties.iter().any(|t| t.seq == b && t.step == s)
                })
        })
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
            let ties: Vec<usize> = self
                .near_ties
                .iter()
                .filter(|t| t.seq == i)
                .map(|t| t.step)
                .collect();
            let ok = if e == g {
                "same".to_string()
            } else if e
                .iter()
                .zip(g)
                .enumerate()
                .all(|(s, (a, b))| a == b || ties.contains(&s))
            {
                format!("differ only at near ties, steps {ties:?}")
            } else {
                "DIFFER".to_string()
            };
            let _ = writeln!(s, "decode seq {i}: golden {e:?}");
            let _ = writeln!(s, "decode seq {i}: ours   {g:?} ({ok}; teacher-forced)");
            if let Some(f) = self.free_tokens.get(i).filter(|f| *f != e) {
                let _ = writeln!(s, "decode seq {i}: ours   {f:?} (free-running)");
            }
        }
        for t in &self.near_ties {
            let _ = writeln!(
                s,
                "near tie: seq {} step {}: golden top-2 margin {:.3e} < 2 x our max abs error {:.3e}",
                t.seq, t.step, t.margin, t.max_abs
            );
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
    let n = r.input_ids.len();
    let mut tokens = vec![Vec::new(); n];
    let mut free_tokens = vec![Vec::new(); n];
    let mut near_ties = Vec::new();
    if steps > 0 {
        if r.decode_ids.iter().any(|d| d.len() != steps) {
            return Err(Error::invalid("reference decode_ids rows differ in length"));
        }
        let forced = teacher_forced_logits(model, r, steps)?;
        for s in 0..steps {
            let mut ours = Vec::new();
            let mut gold = Vec::new();
            for (b, (fb, tb)) in forced.iter().zip(tokens.iter_mut()).enumerate() {
                let l = &fb[s];
                ours.extend_from_slice(l);
                let tok = crate::model::argmax(l);
                tb.push(tok);
                if let Some(dl) = &r.decode_logits {
                    let off = (b * steps + s) * vocab;
                    let g = dl.data.get(off..off + vocab).ok_or_else(|| {
                        Error::invalid(format!(
                            "reference decode_logits have shape {:?}, expected [{n}, {steps}, {vocab}]",
                            dl.shape
                        ))
                    })?;
                    gold.extend_from_slice(g);
                    if tok != r.decode_ids[b][s] {
                        let (margin, max_abs) = (top2_margin(g), max_abs_diff(l, g).0);
                        if margin < 2.0 * max_abs {
                            near_ties.push(NearTie {
                                seq: b,
                                step: s,
                                margin,
                                max_abs,
                            });
                        }
                    }
                }
            }
            if r.decode_logits.is_some() {
                rows.push(row(format!("decode step {s} logits"), &ours, &gold));
            }
        }
        free_tokens = generate(model, &r.input_ids, steps, &Sampling::greedy(), &[], false)?.tokens;
    }
    Ok(ParityReport {
        rows,
        expected_tokens: r.decode_ids.clone(),
        tokens,
        free_tokens,
        near_ties,
    })
}

/// Largest minus second-largest value of a row (infinity for fewer than two values).
fn top2_margin(row: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in row {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// The logits of every decode step with the golden tokens fed back (step 0: the prompt's last
/// token; step s > 0: the cached one-token step fed `decode_ids[b][s - 1]`), so that each step
/// is compared on the same inputs as the golden's: `[prompt][step][V]`.
fn teacher_forced_logits<B: Backend>(
    model: &HybridModel<B>,
    r: &Reference,
    steps: usize,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let n = r.input_ids.len();
    let vocab = model.config().vocab_size;
    let cap = r.input_ids.iter().map(|p| p.len()).max().unwrap_or(0) + steps;
    let mut cache = model.new_cache(n, cap.max(1))?;
    let slots: Vec<usize> = (0..n).collect();
    let prompts: Vec<&[u32]> = r.input_ids.iter().map(|p| p.as_slice()).collect();
    let mut out = vec![Vec::with_capacity(steps); n];
    let mut logits = model
        .forward(&prompts, &slots, &mut cache, Logits::Last, false)?
        .logits
        .expect("logits asked");
    for s in 0..steps {
        for (b, o) in out.iter_mut().enumerate() {
            o.push(logits.data[b * vocab..(b + 1) * vocab].to_vec());
        }
        if s + 1 < steps {
            let fed: Vec<[u32; 1]> = r.decode_ids.iter().map(|d| [d[s]]).collect();
            let fed: Vec<&[u32]> = fed.iter().map(|t| t.as_slice()).collect();
            logits = model
                .forward(&fed, &slots, &mut cache, Logits::Last, false)?
                .logits
                .expect("logits asked");
        }
    }
    Ok(out)
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
