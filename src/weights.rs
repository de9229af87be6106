//! Falcon-H1 checkpoints in safetensors: one file or sharded through
//! `model.safetensors.index.json`, memory-mapped, bf16 / f16 / f32 converted to f32 on read;
//! the per-layer weight set; and the µP multipliers folded into the weights exactly once.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use memmap2::Mmap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the mapped file.
    start: usize,
    end: usize,
}

/// A memory-mapped safetensors checkpoint (one or more files). Headers are parsed and
/// validated when it is opened; tensor bytes are read (and converted) on demand.
pub struct Checkpoint {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    entries: HashMap<String, Entry>,
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn st_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl Checkpoint {
    /// Opens the checkpoint of a model folder: `model.safetensors.index.json` when present (every
    /// shard it names), else `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index = dir.join("model.safetensors.index.json");
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| st_err(&index, format!("index is not valid JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| st_err(&index, "index has no \"weight_map\" object"))?;
            let mut files: Vec<String> = Vec::new();
            let mut want: HashMap<String, String> = HashMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    st_err(
                        &index,
                        format!("weight_map entry `{name}` is not a file name"),
                    )
                })?;
                if !files.iter().any(|f| f == file) {
                    files.push(file.to_string());
                }
                want.insert(name.clone(), file.to_string());
            }
            files.sort();
            let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
            let ckpt = Self::open_files(paths)?;
            for (name, file) in &want {
                match ckpt.entries.get(name) {
                    Some(e) if ckpt.paths[e.file] == dir.join(file) => {}
                    _ => {
                        return Err(st_err(
                            &index,
                            format!("the index puts `{name}` in {file}, which does not hold it"),
                        ))
                    }
                }
            }
            Ok(ckpt)
        } else {
            Self::open_files(vec![dir.join("model.safetensors")])
        }
    }

    /// Opens one safetensors file (a golden reference file, say).
    pub fn open_file(path: &Path) -> Result<Checkpoint> {
        Self::open_files(vec![path.to_path_buf()])
    }

    fn open_files(paths: Vec<PathBuf>) -> Result<Checkpoint> {
        let mut maps = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| io_err(path, e))?;
            // SAFETY: a read-only private map of a checkpoint file; the crate never writes to it,
            // and checkpoints are not modified while a model loads (the same contract as every
            // mmap-based safetensors loader).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
            // deserialize validates the header, the offsets and that the data fits the file.
            let st = SafeTensors::deserialize(&map).map_err(|e| st_err(path, e.to_string()))?;
            let (header_len, _) =
                SafeTensors::read_metadata(&map).map_err(|e| st_err(path, e.to_string()))?;
            let base = 8 + header_len;
            for (name, view) in st.tensors() {
                let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
                debug_assert!(start >= base);
                let end = start + view.data().len();
                if entries.contains_key(&name) {
                    return Err(st_err(
                        path,
                        format!("tensor `{name}` appears in two files"),
                    ));
                }
                entries.insert(
                    name,
                    Entry {
                        file: fi,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        start,
                        end,
                    },
                );
            }
            maps.push(map);
        }
        Ok(Checkpoint {
            paths,
            maps,
            entries,
        })
    }

    /// True when the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().cloned().collect();
        v.sort();
        v
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.entries.values().map(|e| e.end - e.start).sum()
    }

    fn bytes(&self, e: &Entry) -> &[u8] {
        &self.maps[e.file][e.start..e.end]
    }

    /// Reads `name` as f32 after checking its shape is `expected`.
    pub fn tensor_f32(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            expected: expected.to_vec(),
        })?;
        if e.shape != expected {
            return Err(Error::ShapeMismatch {
                name: name.into(),
                expected: expected.to_vec(),
                found: e.shape.clone(),
            });
        }
        self.convert(name, e)
    }

    /// Reads `name` as f32 whatever its shape.
    pub fn tensor_any_f32(&self, name: &str) -> Result<HostTensor> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            expected: vec![],
        })?;
        self.convert(name, e)
    }

    /// Reads an I64 tensor (token ids in golden files): its shape and values.
    pub fn tensor_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            expected: vec![],
        })?;
        if e.dtype != Dtype::I64 {
            return Err(Error::UnsupportedDtype {
                name: name.into(),
                dtype: format!("{:?}", e.dtype),
                supported: "I64".into(),
            });
        }
        let v = self
            .bytes(e)
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        Ok((e.shape.clone(), v))
    }

    fn convert(&self, name: &str, e: &Entry) -> Result<HostTensor> {
        let b = self.bytes(e);
        // Explicit little-endian decoding (the safetensors byte order) works on any host; on a
        // little-endian one each closure compiles to a plain load, so this is a copy loop.
        let data: Vec<f32> = match e.dtype {
            Dtype::F32 => decode(b, f32::from_le_bytes),
            Dtype::BF16 => decode(b, |c| half::bf16::from_le_bytes(c).to_f32()),
            Dtype::F16 => decode(b, |c| half::f16::from_le_bytes(c).to_f32()),
            other => {
                return Err(Error::UnsupportedDtype {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                    supported: "BF16, F16, F32".into(),
                })
            }
        };
        HostTensor::new(e.shape.clone(), data)
    }
}

/// Tensors with at least this many values are converted on every core (the embedding table
/// of a big model is hundreds of millions of values); smaller ones are not worth the split.
const PAR_CONVERT_MIN: usize = 1 << 20;

/// Decodes `W`-byte little-endian values to f32; `b.len()` is a multiple of `W` (safetensors
/// checked the byte length against the shape and dtype).
fn decode<const W: usize>(b: &[u8], f: impl Fn([u8; W]) -> f32 + Sync + Send) -> Vec<f32> {
    let one = |c: &[u8]| f(c.try_into().expect("chunks of W bytes"));
    if b.len() / W >= PAR_CONVERT_MIN {
        b.par_chunks_exact(W).map(one).collect()
    } else {
        b.chunks_exact(W).map(one).collect()
    }
}

/// One decoder layer's weights (HF names in the comments), f32 on the host.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// `input_layernorm.weight` [d]
    pub input_layernorm: HostTensor,
    /// `pre_ff_layernorm.weight` [d]
    pub pre_ff_layernorm: HostTensor,
    /// `self_attn.q_proj.weight` [Hq*hd, d]
    pub q_proj: HostTensor,
    /// `self_attn.k_proj.weight` [Hkv*hd, d]
    pub k_proj: HostTensor,
    /// `self_attn.v_proj.weight` [Hkv*hd, d]
    pub v_proj: HostTensor,
    /// `self_attn.o_proj.weight` [d, Hq*hd]
    pub o_proj: HostTensor,
    /// `mamba.in_proj.weight` [2Ds+2GN+H, d]
    pub in_proj: HostTensor,
    /// `mamba.conv1d.weight` [conv_dim, 1, K] stored squeezed as [conv_dim, K]
    pub conv_weight: HostTensor,
    /// `mamba.conv1d.bias` [conv_dim], with `mamba_conv_bias`
    pub conv_bias: Option<HostTensor>,
    /// `mamba.dt_bias` [H]
    pub dt_bias: HostTensor,
    /// `mamba.A_log` [H]
    pub a_log: HostTensor,
    /// `mamba.D` [H]
    pub d: HostTensor,
    /// `mamba.norm.weight` [Ds], with `mamba_rms_norm`
    pub norm: Option<HostTensor>,
    /// `mamba.out_proj.weight` [d, Ds]
    pub out_proj: HostTensor,
    /// `feed_forward.gate_proj.weight` [I, d]
    pub gate_proj: HostTensor,
    /// `feed_forward.up_proj.weight` [I, d]
    pub up_proj: HostTensor,
    /// `feed_forward.down_proj.weight` [d, I]
    pub down_proj: HostTensor,
}

/// Stacks matrices `[r_i, c]` that share their column count into one `[sum r_i, c]`, rows in
/// the order given: the weight of one GEMM that computes every part's projection of the same
/// input (the output's columns are the parts' outputs side by side, in the same order).
pub fn concat_rows(parts: &[&HostTensor]) -> Result<HostTensor> {
    let cols = match parts.first().map(|t| &t.shape[..]) {
        Some(&[_, c]) => c,
        _ => {
            return Err(Error::invalid(
                "concat_rows: needs at least one matrix [rows, cols]",
            ))
        }
    };
    let mut rows = 0;
    for t in parts {
        match t.shape[..] {
            [r, c] if c == cols => rows += r,
            _ => {
                return Err(Error::invalid(format!(
                "concat_rows: cannot stack a tensor of shape {:?} under matrices of {cols} columns",
                t.shape
            )))
            }
        }
    }
    let mut data = Vec::with_capacity(rows * cols);
    for t in parts {
        data.extend_from_slice(&t.data);
    }
    HostTensor::new(vec![rows, cols], data)
}

impl LayerWeights {
    /// Every projection of the layer's normed input in one matrix
    /// `[Hq*hd + 2*Hkv*hd + in_proj_dim, d]`: the rows of `q_proj`, `k_proj`, `v_proj` and
    /// `in_proj`, in that order (each as it is here: folded or not).
    pub fn input_projections(&self) -> Result<HostTensor> {
        concat_rows(&[&self.q_proj, &self.k_proj, &self.v_proj, &self.in_proj])
    }

    /// Both projections of the MLP's normed input in one matrix `[2I, d]`: the rows of
    /// `gate_proj`, then those of `up_proj`.
    pub fn gate_up_proj(&self) -> Result<HostTensor> {
        concat_rows(&[&self.gate_proj, &self.up_proj])
    }
}

/// Every weight of a Falcon-H1 model, f32 on the host, as stored (multipliers not applied).
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// `model.embed_tokens.weight` [V, d]
    pub embed_tokens: HostTensor,
    /// `model.final_layernorm.weight` [d]
    pub final_layernorm: HostTensor,
    /// `lm_head.weight` [V, d] (a copy of the embeddings when tied)
    pub lm_head: HostTensor,
    /// The decoder layers.
    pub layers: Vec<LayerWeights>,
}

/// Shapes of one layer's tensors, by HF name suffix.
fn layer_shapes(c: &Config) -> Vec<(&'static str, Vec<usize>)> {
    let (d, ds, h) = (c.hidden_size, c.mamba_d_ssm, c.mamba_n_heads);
    let mut v = vec![
        ("input_layernorm.weight", vec![d]),
        ("pre_ff_layernorm.weight", vec![d]),
        (
            "self_attn.q_proj.weight",
            vec![c.num_attention_heads * c.head_dim, d],
        ),
        (
            "self_attn.k_proj.weight",
            vec![c.num_key_value_heads * c.head_dim, d],
        ),
        (
            "self_attn.v_proj.weight",
            vec![c.num_key_value_heads * c.head_dim, d],
        ),
        (
            "self_attn.o_proj.weight",
            vec![d, c.num_attention_heads * c.head_dim],
        ),
        ("mamba.in_proj.weight", vec![c.in_proj_dim(), d]),
        ("mamba.conv1d.weight", vec![c.conv_dim(), 1, c.mamba_d_conv]),
        ("mamba.dt_bias", vec![h]),
        ("mamba.A_log", vec![h]),
        ("mamba.D", vec![h]),
        ("mamba.out_proj.weight", vec![d, ds]),
        (
            "feed_forward.gate_proj.weight",
            vec![c.intermediate_size, d],
        ),
        ("feed_forward.up_proj.weight", vec![c.intermediate_size, d]),
        (
            "feed_forward.down_proj.weight",
            vec![d, c.intermediate_size],
        ),
    ];
    if c.mamba_conv_bias {
        v.push(("mamba.conv1d.bias", vec![c.conv_dim()]));
    }
    if c.mamba_rms_norm {
        v.push(("mamba.norm.weight", vec![ds]));
    }
    v
}

fn build_layer(
    c: &Config,
    mut get: impl FnMut(&str, &[usize]) -> Result<HostTensor>,
) -> Result<LayerWeights> {
    let mut t: HashMap<&'static str, HostTensor> = HashMap::new();
    for (name, shape) in layer_shapes(c) {
        t.insert(name, get(name, &shape)?);
    }
    let mut take = |n: &str| t.remove(n).expect("every shape was read");
    let mut conv_weight = take("mamba.conv1d.weight");
    conv_weight.shape = vec![c.conv_dim(), c.mamba_d_conv];
    Ok(LayerWeights {
        input_layernorm: take("input_layernorm.weight"),
        pre_ff_layernorm: take("pre_ff_layernorm.weight"),
        q_proj: take("self_attn.q_proj.weight"),
        k_proj: take("self_attn.k_proj.weight"),
        v_proj: take("self_attn.v_proj.weight"),
        o_proj: take("self_attn.o_proj.weight"),
        in_proj: take("mamba.in_proj.weight"),
        conv_weight,
        conv_bias: c.mamba_conv_bias.then(|| take("mamba.conv1d.bias")),
        dt_bias: take("mamba.dt_bias"),
        a_log: take("mamba.A_log"),
        d: take("mamba.D"),
        norm: c.mamba_rms_norm.then(|| take("mamba.norm.weight")),
        out_proj: take("mamba.out_proj.weight"),
        gate_proj: take("feed_forward.gate_proj.weight"),
        up_proj: take("feed_forward.up_proj.weight"),
        down_proj: take("feed_forward.down_proj.weight"),
    })
}

impl ModelWeights {
    /// Reads every tensor the config calls for, checking each shape. A progress bar shows on a
    /// terminal when `progress` is set and the checkpoint is large.
    pub fn load(ckpt: &Checkpoint, cfg: &Config, progress: bool) -> Result<ModelWeights> {
        cfg.validate()?;
        let (v, d) = (cfg.vocab_size, cfg.hidden_size);
        let show = progress
            && ckpt.total_bytes() > 200 << 20
            && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = if show {
            let b = indicatif::ProgressBar::new(cfg.num_hidden_layers as u64 + 1);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "loading weights {bar:40} {pos}/{len} layers [{elapsed}]",
                )
                .expect("valid template"),
            );
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let embed_tokens = ckpt.tensor_f32("model.embed_tokens.weight", &[v, d])?;
        let final_layernorm = ckpt.tensor_f32("model.final_layernorm.weight", &[d])?;
        let lm_head = if cfg.tie_word_embeddings && !ckpt.contains("lm_head.weight") {
            embed_tokens.clone()
        } else {
            ckpt.tensor_f32("lm_head.weight", &[v, d])?
        };
        bar.inc(1);
        let layers = (0..cfg.num_hidden_layers)
            .into_par_iter()
            .map(|i| {
                let l = build_layer(cfg, |name, shape| {
                    ckpt.tensor_f32(&format!("model.layers.{i}.{name}"), shape)
                });
                bar.inc(1);
                l
            })
            .collect::<Result<Vec<_>>>()?;
        bar.finish_and_clear();
        Ok(ModelWeights {
            embed_tokens,
            final_layernorm,
            lm_head,
            layers,
        })
    }

    /// Random weights of the config's shape (deterministic for a seed, whatever the thread
    /// count), scaled so that a forward gives finite, non-trivial outputs: for benchmarks and
    /// tests without a checkpoint. Matrices U(-1,1)/sqrt(in), embeddings U(-1,1), norms and D
    /// near 1, conv U(-0.5,0.5), A_log in [0, ln 16) (A in (-16, -1]), dt_bias such that
    /// softplus(dt_bias) is in [1e-3, 0.1). Tied configs get `lm_head` = the embeddings. Big
    /// tensors fill on every core, but the large presets still take seconds to minutes and the
    /// memory of an f32 model (7B: about 30 GB).
    pub fn random(cfg: &Config, seed: u64) -> ModelWeights {
        fn fill(shape: Vec<usize>, seed: u64, f: impl Fn(&mut StdRng) -> f32 + Sync) -> HostTensor {
            let n: usize = shape.iter().product();
            // Independent streams per block of 64K values so that big tensors fill in parallel.
            let data: Vec<f32> = (0..n.div_ceil(1 << 16))
                .into_par_iter()
                .flat_map_iter(|blk| {
                    let mut rng = StdRng::seed_from_u64(seed ^ ((blk as u64) << 20));
                    let len = (n - blk * (1 << 16)).min(1 << 16);
                    (0..len).map(|_| f(&mut rng)).collect::<Vec<_>>()
                })
                .collect();
            HostTensor { shape, data }
        }
        let mut next = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut s = || {
            next = next.wrapping_add(0x9E37_79B9_7F4A_7C15);
            next
        };
        let matrix = |shape: Vec<usize>, seed: u64| {
            let a = 1.0 / (shape[1] as f32).sqrt();
            fill(shape, seed, move |r| r.random_range(-a..a))
        };
        let around_one =
            |n: usize, seed: u64| fill(vec![n], seed, |r| 1.0 + r.random_range(-0.1..0.1));
        let (v, d) = (cfg.vocab_size, cfg.hidden_size);
        let embed_tokens = fill(vec![v, d], s(), |r| r.random_range(-1.0..1.0));
        let final_layernorm = around_one(d, s());
        // The seed is taken even when tied, so that the layers get the same values either way.
        let head_seed = s();
        // Tied: the head is the embedding table, as `load` makes it.
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            matrix(vec![v, d], head_seed)
        };
        let h = cfg.mamba_n_heads;
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                let base = s();
                let mut k = 0u64;
                let mut ls = || {
                    k += 1;
                    base ^ (k << 40)
                };
                LayerWeights {
                    input_layernorm: around_one(d, ls()),
                    pre_ff_layernorm: around_one(d, ls()),
                    q_proj: matrix(vec![cfg.num_attention_heads * cfg.head_dim, d], ls()),
                    k_proj: matrix(vec![cfg.num_key_value_heads * cfg.head_dim, d], ls()),
                    v_proj: matrix(vec![cfg.num_key_value_heads * cfg.head_dim, d], ls()),
                    o_proj: matrix(vec![d, cfg.num_attention_heads * cfg.head_dim], ls()),
                    in_proj: matrix(vec![cfg.in_proj_dim(), d], ls()),
                    conv_weight: fill(vec![cfg.conv_dim(), cfg.mamba_d_conv], ls(), |r| {
                        r.random_range(-0.5..0.5)
                    }),
                    conv_bias: cfg
                        .mamba_conv_bias
                        .then(|| fill(vec![cfg.conv_dim()], ls(), |r| r.random_range(-0.1..0.1))),
                    // softplus(dt_bias) in [1e-3, 0.1], as trained models have.
                    dt_bias: fill(vec![h], ls(), |r| {
                        let dt: f32 = r.random_range(1e-3..0.1);
                        dt.exp_m1().ln()
                    }),
                    a_log: fill(vec![h], ls(), |r| r.random_range(0.0..16f32.ln())),
                    d: around_one(h, ls()),
                    norm: cfg
                        .mamba_rms_norm
                        .then(|| around_one(cfg.mamba_d_ssm, ls())),
                    out_proj: matrix(vec![d, cfg.mamba_d_ssm], ls()),
                    gate_proj: matrix(vec![cfg.intermediate_size, d], ls()),
                    up_proj: matrix(vec![cfg.intermediate_size, d], ls()),
                    down_proj: matrix(vec![d, cfg.intermediate_size], ls()),
                }
            })
            .collect();
        ModelWeights {
            embed_tokens,
            final_layernorm,
            lm_head,
            layers,
        }
    }

    /// Folds every µP multiplier of `cfg` into the weights (the spec's "Folding the
    /// multipliers", as llama.cpp does at conversion), after which the model needs none at run
    /// time. Consumes the weights so it cannot happen twice.
    pub fn fold_multipliers(mut self, cfg: &Config) -> FoldedWeights {
        let f = |x: f64| x as f32;
        self.embed_tokens.scale(f(cfg.embedding_multiplier));
        self.lm_head.scale(f(cfg.lm_head_multiplier));
        let (ds, gn) = (cfg.mamba_d_ssm, cfg.mamba_n_groups * cfg.mamba_d_state);
        // Row segments of in_proj: [z | x | B | C | dt].
        let bounds = [
            0,
            ds,
            2 * ds,
            2 * ds + gn,
            2 * ds + 2 * gn,
            cfg.in_proj_dim(),
        ];
        let d = cfg.hidden_size;
        self.layers.par_iter_mut().for_each(|l| {
            // Each product is formed in f64 and rounded once.
            l.q_proj.scale(f(cfg.attention_in_multiplier));
            l.k_proj
                .scale(f(cfg.key_multiplier * cfg.attention_in_multiplier));
            l.v_proj.scale(f(cfg.attention_in_multiplier));
            l.o_proj.scale(f(cfg.attention_out_multiplier));
            l.out_proj.scale(f(cfg.ssm_out_multiplier));
            for (seg, m) in cfg.ssm_multipliers.iter().enumerate() {
                let s = f(cfg.ssm_in_multiplier * m);
                l.in_proj.data[bounds[seg] * d..bounds[seg + 1] * d]
                    .iter_mut()
                    .for_each(|v| *v *= s);
            }
            l.gate_proj.scale(f(cfg.mlp_multipliers[0]));
            l.down_proj.scale(f(cfg.mlp_multipliers[1]));
        });
        FoldedWeights(self)
    }
}

/// Weights with every µP multiplier folded in exactly once; read-only, so it cannot be folded
/// again.
#[derive(Debug, Clone)]
pub struct FoldedWeights(ModelWeights);

impl std::ops::Deref for FoldedWeights {
    type Target = ModelWeights;
    fn deref(&self) -> &ModelWeights {
        &self.0
    }
}
