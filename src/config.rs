//! Falcon-H1 `config.json`: every field the model uses, HF's defaults where a key is absent,
//! validation with errors that name the field, and presets for the released shapes.

use crate::error::{Error, Result};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The model's hyper-parameters (spec notation in parentheses).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Vocabulary size (`V`).
    pub vocab_size: usize,
    /// Residual width (`d`).
    pub hidden_size: usize,
    /// MLP width (`I`).
    pub intermediate_size: usize,
    /// Layers; every one is the same parallel hybrid block.
    pub num_hidden_layers: usize,
    /// Query heads (`Hq`).
    pub num_attention_heads: usize,
    /// Key/value heads (`Hkv`) (HF: 8 when absent, `num_attention_heads` when null).
    pub num_key_value_heads: usize,
    /// Attention head size (`hd`); from config.json, HF's fallback hidden/heads only when absent.
    pub head_dim: usize,
    /// RMSNorm epsilon (also of the gated norm).
    pub rms_norm_eps: f64,
    /// Activation; only "silu" is supported.
    pub hidden_act: String,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// RoPE base, from `rope_parameters.rope_theta` or `rope_theta` (10000 when neither).
    pub rope_theta: f64,
    /// Mamba inner width (`Ds`) (HF: 1024 when absent, `mamba_expand * hidden_size` when null).
    pub mamba_d_ssm: usize,
    /// Mamba heads (`H`).
    pub mamba_n_heads: usize,
    /// Channels per Mamba head (`P`) ("auto" = Ds / H).
    pub mamba_d_head: usize,
    /// B/C groups (`G`).
    pub mamba_n_groups: usize,
    /// SSM state size (`N`).
    pub mamba_d_state: usize,
    /// Conv width (`K`), 1..=8.
    pub mamba_d_conv: usize,
    /// Chunk length of the chunked scan.
    pub mamba_chunk_size: usize,
    /// The conv has a bias.
    pub mamba_conv_bias: bool,
    /// The Mamba output goes through the gated group RMSNorm (else `y * silu(z)`).
    pub mamba_rms_norm: bool,
    /// Norm then gate (true, HF's default) or gate then norm (false, the releases).
    pub mamba_norm_before_gate: bool,
    /// Clamp of dt after the softplus; (0, inf) is a no-op.
    pub time_step_limit: (f64, f64),
    /// Scales the embeddings.
    pub embedding_multiplier: f64,
    /// Scales the logits.
    pub lm_head_multiplier: f64,
    /// Scales k.
    pub key_multiplier: f64,
    /// Scales the attention input.
    pub attention_in_multiplier: f64,
    /// Scales the attention output.
    pub attention_out_multiplier: f64,
    /// Scales the Mamba input.
    pub ssm_in_multiplier: f64,
    /// Scales the Mamba output.
    pub ssm_out_multiplier: f64,
    /// [gate, down] multipliers of the MLP.
    pub mlp_multipliers: [f64; 2],
    /// Multipliers of the in_proj segments [z, x, B, C, dt].
    pub ssm_multipliers: [f64; 5],
    /// Beginning-of-sequence token (HF default 1 when absent, `None` when null).
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (config may hold one id or a list; HF default `[2]` when absent,
    /// empty when null).
    pub eos_token_ids: Vec<u32>,
    /// Padding token (HF default 0 when absent, `None` when null).
    pub pad_token_id: Option<u32>,
}

/// config.json as written by HF. `Option<T>`: absent or null (the two mean the same for HF).
/// `Option<Option<T>>` where HF tells them apart: `None` = absent (the class default applies),
/// `Some(None)` = an explicit null (HF derives the value, e.g. `num_key_value_heads` from the
/// attention heads).
#[derive(Deserialize)]
struct RawConfig {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    #[serde(default, deserialize_with = "nullable")]
    num_key_value_heads: Option<Option<usize>>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    mamba_d_ssm: Option<Option<usize>>,
    mamba_n_heads: Option<usize>,
    mamba_d_head: Option<Value>,
    mamba_n_groups: Option<usize>,
    mamba_d_state: Option<usize>,
    mamba_d_conv: Option<usize>,
    mamba_expand: Option<f64>,
    mamba_chunk_size: Option<usize>,
    mamba_conv_bias: Option<bool>,
    mamba_proj_bias: Option<bool>,
    mamba_rms_norm: Option<bool>,
    mamba_norm_before_gate: Option<bool>,
    time_step_limit: Option<Vec<Value>>,
    projectors_bias: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    embedding_multiplier: Option<f64>,
    lm_head_multiplier: Option<f64>,
    key_multiplier: Option<f64>,
    attention_in_multiplier: Option<f64>,
    attention_out_multiplier: Option<f64>,
    ssm_in_multiplier: Option<f64>,
    ssm_out_multiplier: Option<f64>,
    mlp_multipliers: Option<Vec<f64>>,
    ssm_multipliers: Option<Vec<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    bos_token_id: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    eos_token_id: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pad_token_id: Option<Option<u32>>,
}

/// With `#[serde(default)]`: an absent key stays `None`, a null becomes `Some(None)`.
fn nullable<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::ConfigInvalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Python's `json.dumps` (what `save_pretrained` uses) writes infinities and NaN as the bare
/// tokens `Infinity`, `-Infinity` and `NaN`, which are not JSON: quote them outside strings so
/// that serde reads them and [`float_value`] understands them (`time_step_limit: [0.0, Infinity]`).
fn quote_python_floats(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains("Infinity") && !s.contains("NaN") {
        return std::borrow::Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len() + 16);
    let (mut in_str, mut escaped, mut i) = (false, false, 0);
    'scan: while i < b.len() {
        let c = b[i];
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' {
            in_str = true;
        } else {
            for tok in [&b"-Infinity"[..], b"Infinity", b"NaN"] {
                if b[i..].starts_with(tok) {
                    out.push(b'"');
                    out.extend_from_slice(tok);
                    out.push(b'"');
                    i += tok.len();
                    continue 'scan;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    // Only ASCII was inserted, between whole tokens: the bytes are still UTF-8.
    std::borrow::Cow::Owned(String::from_utf8(out).expect("still UTF-8"))
}

/// transformers 5 saves floats JSON cannot hold as tagged objects, `{"__float__": "Infinity"}`
/// (also "-Infinity" and "NaN"), and decodes them on load: turn each into its string, which
/// [`float_value`] reads (a plain f64 field holding one is then a type error naming the key).
fn decode_float_tags(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.len() == 1 {
                if let Some(Value::String(tag)) = o.get("__float__") {
                    if matches!(tag.as_str(), "Infinity" | "-Infinity" | "NaN") {
                        *v = Value::String(tag.clone());
                        return;
                    }
                }
            }
            o.values_mut().for_each(decode_float_tags);
        }
        Value::Array(a) => a.iter_mut().for_each(decode_float_tags),
        _ => {}
    }
}

/// A float that JSON may spell as a number, null (`null` is the value given) or a string such
/// as "inf", "Infinity" or "-inf".
fn float_value(field: &str, v: &Value, null: f64) -> Result<f64> {
    match v {
        Value::Null => Ok(null),
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| invalid(field, format!("{n} is not a number"))),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "inf" | "infinity" | "+inf" | "+infinity" => Ok(f64::INFINITY),
            "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
            _ => s
                .parse()
                .map_err(|_| invalid(field, format!("\"{s}\" is not a number"))),
        },
        other => Err(invalid(field, format!("{other} is not a number"))),
    }
}

/// A multiplier list of exactly `N` values; absent or null means all ones (HF's default).
fn fixed<const N: usize>(field: &str, v: Option<Vec<f64>>) -> Result<[f64; N]> {
    match v {
        None => Ok([1.0; N]),
        Some(v) => v.as_slice().try_into().map_err(|_| {
            invalid(
                field,
                format!("expected {N} values, found {} ({v:?})", v.len()),
            )
        }),
    }
}

/// A token id list from `eos_token_id`: one id or a list of ids.
fn token_ids(field: &str, v: &Value) -> Result<Vec<u32>> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| invalid(field, format!("{v} is not a token id")))
    };
    match v {
        Value::Null => Ok(vec![]),
        Value::Array(a) => a.iter().map(one).collect(),
        Value::Number(_) => Ok(vec![one(v)?]),
        other => Err(invalid(
            field,
            format!("expected an id or a list of ids, found {other}"),
        )),
    }
}

/// RoPE base and type, the way transformers 5 standardises them: a non-empty legacy
/// `rope_scaling` replaces `rope_parameters`; the type is its `rope_type` (or legacy `type`),
/// "default" when absent; the base is its `rope_theta`, else the top-level `rope_theta`, else
/// 10000 (HF's `default_theta`). Only default RoPE is implemented: any other type is an error.
fn resolve_rope(
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
) -> Result<f64> {
    let non_empty = |v: &Value| !v.is_null() && !matches!(v.as_object(), Some(o) if o.is_empty());
    let (field, params) = match rope_scaling.filter(non_empty) {
        Some(s) => ("rope_scaling", Some(s)),
        None => ("rope_parameters", rope_parameters.filter(|v| !v.is_null())),
    };
    let Some(params) = params else {
        return Ok(rope_theta.unwrap_or(10000.0));
    };
    let obj = params
        .as_object()
        .ok_or_else(|| invalid(field, format!("expected an object, found {params}")))?;
    for key in ["rope_type", "type"] {
        match obj.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(t)) if t == "default" => break,
            Some(other) => {
                return Err(invalid(
                    &format!("{field}.{key}"),
                    format!("{other} is not supported (only \"default\" RoPE is implemented)"),
                ))
            }
        }
    }
    match obj.get("rope_theta") {
        None | Some(Value::Null) => Ok(rope_theta.unwrap_or(10000.0)),
        Some(t) => {
            let field = format!("{field}.rope_theta");
            let theta = float_value(&field, t, f64::NAN)?;
            if !(theta > 0.0 && theta.is_finite()) {
                return Err(invalid(
                    &field,
                    format!("must be positive and finite, found {theta}"),
                ));
            }
            Ok(theta)
        }
    }
}

impl RawConfig {
    fn resolve(self) -> Result<Config> {
        // Defaults are those of transformers' FalconH1Config (5.17): an absent key takes the
        // class default, an explicit null what `__post_init__` derives from other fields.
        let hidden_size = self.hidden_size.unwrap_or(4096);
        let num_attention_heads = self.num_attention_heads.unwrap_or(32);
        let mamba_expand = self.mamba_expand.unwrap_or(2.0);
        let mamba_d_ssm = match self.mamba_d_ssm {
            None => 1024,
            // A negative or NaN product saturates to 0, which validate() reports.
            Some(None) => (mamba_expand * hidden_size as f64) as usize,
            Some(Some(v)) => v,
        };
        let mamba_n_heads = self.mamba_n_heads.unwrap_or(128);
        let mamba_d_head = match self.mamba_d_head {
            None | Some(Value::Null) => mamba_d_ssm / mamba_n_heads.max(1),
            Some(Value::String(s)) if s == "auto" => mamba_d_ssm / mamba_n_heads.max(1),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| invalid("mamba_d_head", format!("{n} is not a positive integer")))?,
            Some(other) => {
                return Err(invalid(
                    "mamba_d_head",
                    format!("expected an integer or \"auto\", found {other}"),
                ))
            }
        };
        let rope_theta = resolve_rope(self.rope_theta, self.rope_parameters, self.rope_scaling)?;
        let time_step_limit = match self.time_step_limit {
            None => (0.0, f64::INFINITY),
            Some(v) if v.len() == 2 => (
                float_value("time_step_limit", &v[0], 0.0)?,
                float_value("time_step_limit", &v[1], f64::INFINITY)?,
            ),
            Some(v) => {
                return Err(invalid(
                    "time_step_limit",
                    format!("expected [low, high], found {} values", v.len()),
                ))
            }
        };
        let eos_token_ids = match &self.eos_token_id {
            None => vec![2],
            Some(None) => vec![],
            Some(Some(v)) => token_ids("eos_token_id", v)?,
        };
        for (field, on) in [
            ("attention_bias", self.attention_bias),
            ("mlp_bias", self.mlp_bias),
            ("projectors_bias", self.projectors_bias),
            ("mamba_proj_bias", self.mamba_proj_bias),
        ] {
            if on == Some(true) {
                return Err(invalid(
                    field,
                    "true is not supported (no released Falcon-H1 has these biases)",
                ));
            }
        }
        Ok(Config {
            vocab_size: self.vocab_size.unwrap_or(128000),
            hidden_size,
            intermediate_size: self.intermediate_size.unwrap_or(14336),
            num_hidden_layers: self.num_hidden_layers.unwrap_or(32),
            num_attention_heads,
            num_key_value_heads: match self.num_key_value_heads {
                None => 8,
                Some(None) => num_attention_heads,
                Some(Some(v)) => v,
            },
            // HF reads it with getattr(config, "head_dim", hidden / heads): from the file when
            // there, else the fallback (null is treated as absent, as HF's RoPE init does).
            head_dim: self
                .head_dim
                .unwrap_or(hidden_size / num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-5),
            hidden_act: self.hidden_act.unwrap_or_else(|| "silu".into()),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(8192),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            rope_theta,
            mamba_d_ssm,
            mamba_n_heads,
            mamba_d_head,
            mamba_n_groups: self.mamba_n_groups.unwrap_or(1),
            mamba_d_state: self.mamba_d_state.unwrap_or(256),
            mamba_d_conv: self.mamba_d_conv.unwrap_or(4),
            mamba_chunk_size: self.mamba_chunk_size.unwrap_or(256),
            mamba_conv_bias: self.mamba_conv_bias.unwrap_or(true),
            mamba_rms_norm: self.mamba_rms_norm.unwrap_or(false),
            mamba_norm_before_gate: self.mamba_norm_before_gate.unwrap_or(true),
            time_step_limit,
            embedding_multiplier: self.embedding_multiplier.unwrap_or(1.0),
            lm_head_multiplier: self.lm_head_multiplier.unwrap_or(1.0),
            key_multiplier: self.key_multiplier.unwrap_or(1.0),
            attention_in_multiplier: self.attention_in_multiplier.unwrap_or(1.0),
            attention_out_multiplier: self.attention_out_multiplier.unwrap_or(1.0),
            ssm_in_multiplier: self.ssm_in_multiplier.unwrap_or(1.0),
            ssm_out_multiplier: self.ssm_out_multiplier.unwrap_or(1.0),
            mlp_multipliers: fixed("mlp_multipliers", self.mlp_multipliers)?,
            ssm_multipliers: fixed("ssm_multipliers", self.ssm_multipliers)?,
            bos_token_id: self.bos_token_id.unwrap_or(Some(1)),
            eos_token_ids,
            pad_token_id: self.pad_token_id.unwrap_or(Some(0)),
        })
    }
}

impl Config {
    /// Reads, resolves and validates a `config.json`. Unknown keys are ignored. Infinities may be
    /// written as transformers 5 does (`{"__float__": "Infinity"}`), as Python's `json` does
    /// (a bare `Infinity`), or as the strings "inf" / "Infinity".
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses, resolves and validates config.json text (see [`Config::from_file`]).
    pub fn from_json_str(s: &str) -> Result<Config> {
        Self::parse(s, "<string>")
    }

    fn parse(s: &str, origin: &str) -> Result<Config> {
        let parse_err = |message: String| Error::ConfigParse {
            path: origin.into(),
            message,
        };
        let mut value: Value =
            serde_json::from_str(&quote_python_floats(s)).map_err(|e| parse_err(e.to_string()))?;
        decode_float_tags(&mut value);
        let raw: RawConfig = serde_json::from_value(value.clone()).map_err(|e| {
            // serde does not say which key held the bad value: find it by parsing each key alone.
            let culprit = value.as_object().and_then(|obj| {
                obj.iter().find(|(k, v)| {
                    let one = serde_json::json!({ (*k).clone(): (*v).clone() });
                    serde_json::from_value::<RawConfig>(one).is_err()
                })
            });
            match culprit {
                Some((k, v)) => parse_err(format!("field `{k}`: {e} (found {v})")),
                None => parse_err(e.to_string()),
            }
        })?;
        let cfg = raw.resolve()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Width of the conv input xBC: `Ds + 2*G*N`.
    pub fn conv_dim(&self) -> usize {
        self.mamba_d_ssm + 2 * self.mamba_n_groups * self.mamba_d_state
    }

    /// Rows of `mamba.in_proj`: `[z | x | B | C | dt]` = `2*Ds + 2*G*N + H`.
    pub fn in_proj_dim(&self) -> usize {
        self.mamba_d_ssm + self.conv_dim() + self.mamba_n_heads
    }

    /// One line for logs: the shape and the switches that change the computation.
    pub fn summary(&self) -> String {
        format!(
            "{} layers, d={}, I={}, vocab={}, attn Hq={} Hkv={} hd={}, mamba Ds={} H={} P={} \
             N={} G={} K={} chunk={}, rms_norm={} norm_before_gate={}, theta={:e}, ctx={}, tied={}",
            self.num_hidden_layers,
            self.hidden_size,
            self.intermediate_size,
            self.vocab_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
            self.mamba_d_ssm,
            self.mamba_n_heads,
            self.mamba_d_head,
            self.mamba_d_state,
            self.mamba_n_groups,
            self.mamba_d_conv,
            self.mamba_chunk_size,
            self.mamba_rms_norm,
            self.mamba_norm_before_gate,
            self.rope_theta,
            self.max_position_embeddings,
            self.tie_word_embeddings,
        )
    }

    /// Checks that the model can run with these values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("mamba_d_ssm", self.mamba_d_ssm),
            ("mamba_n_heads", self.mamba_n_heads),
            ("mamba_d_head", self.mamba_d_head),
            ("mamba_n_groups", self.mamba_n_groups),
            ("mamba_d_state", self.mamba_d_state),
            ("mamba_d_conv", self.mamba_d_conv),
            ("mamba_chunk_size", self.mamba_chunk_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in sizes {
            if v == 0 {
                return Err(invalid(field, "must be positive, found 0"));
            }
        }
        if self.mamba_d_ssm % self.mamba_n_heads != 0 {
            return Err(invalid(
                "mamba_n_heads",
                format!(
                    "mamba_n_heads ({}) must divide mamba_d_ssm ({})",
                    self.mamba_n_heads, self.mamba_d_ssm
                ),
            ));
        }
        if self.mamba_n_heads * self.mamba_d_head != self.mamba_d_ssm {
            return Err(invalid(
                "mamba_d_head",
                format!(
                    "mamba_n_heads ({}) * mamba_d_head ({}) = {} must equal mamba_d_ssm ({})",
                    self.mamba_n_heads,
                    self.mamba_d_head,
                    self.mamba_n_heads * self.mamba_d_head,
                    self.mamba_d_ssm
                ),
            ));
        }
        if !(1..=8).contains(&self.mamba_d_conv) {
            return Err(invalid(
                "mamba_d_conv",
                format!("must be in 1..=8, found {}", self.mamba_d_conv),
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(invalid(
                "num_key_value_heads",
                format!(
                    "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if self.mamba_n_heads % self.mamba_n_groups != 0 {
            return Err(invalid(
                "mamba_n_groups",
                format!(
                    "mamba_n_heads ({}) must be a multiple of mamba_n_groups ({})",
                    self.mamba_n_heads, self.mamba_n_groups
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(invalid(
                "head_dim",
                format!(
                    "RoPE rotates halves: head_dim must be even, found {}",
                    self.head_dim
                ),
            ));
        }
        if self.hidden_act != "silu" {
            return Err(invalid(
                "hidden_act",
                format!("\"{}\" is not supported (only \"silu\")", self.hidden_act),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(invalid(
                "rms_norm_eps",
                format!("must be positive and finite, found {}", self.rms_norm_eps),
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(invalid(
                "rope_theta",
                format!("must be positive and finite, found {}", self.rope_theta),
            ));
        }
        let (lo, hi) = self.time_step_limit;
        if lo.is_nan() || hi.is_nan() || lo > hi || lo < 0.0 {
            return Err(invalid(
                "time_step_limit",
                format!("expected 0 <= low <= high, found ({lo}, {hi})"),
            ));
        }
        let mults = [
            ("embedding_multiplier", self.embedding_multiplier),
            ("lm_head_multiplier", self.lm_head_multiplier),
            ("key_multiplier", self.key_multiplier),
            ("attention_in_multiplier", self.attention_in_multiplier),
            ("attention_out_multiplier", self.attention_out_multiplier),
            ("ssm_in_multiplier", self.ssm_in_multiplier),
            ("ssm_out_multiplier", self.ssm_out_multiplier),
        ];
        for (field, v) in mults
            .into_iter()
            .chain(self.mlp_multipliers.map(|v| ("mlp_multipliers", v)))
            .chain(self.ssm_multipliers.map(|v| ("ssm_multipliers", v)))
        {
            if !v.is_finite() {
                return Err(invalid(field, format!("must be finite, found {v}")));
            }
        }
        Ok(())
    }

    /// The shape of a released model (spec table), for benchmarks and tests with random
    /// weights. Shared by all: chunk 128, K = 4, conv bias, no projection biases, rope_theta
    /// 1e11, untied embeddings, `mamba_norm_before_gate: false`, eps 1e-5, no dt clamp, and
    /// `max_position_embeddings` from the context column.
    ///
    /// Multipliers: 0.5B carries its real µP multipliers (given by the spec). Every other preset
    /// sets **all multipliers to 1.0**: their real values live in each model's config.json and
    /// are not reproduced here, so a preset is a shape, not a substitute for the real config.
    /// Token ids (bos 1, eos 11, pad 0) are placeholders of the same kind.
    pub fn preset(p: Preset) -> Config {
        // (layers, d, I, Hq, Hkv, hd, H, P, N, G, vocab, context, rms_norm)
        let (l, d, i, hq, hkv, hd, h, pp, n, g, v, ctx, rms) = match p {
            Preset::P0_5B => (
                36, 1024, 2048, 8, 2, 64, 24, 64, 128, 1, 32784, 16384, false,
            ),
            Preset::P1_5B => (
                24, 2048, 4608, 8, 2, 128, 48, 64, 256, 1, 65537, 131072, true,
            ),
            Preset::P1_5BDeep => (
                66, 1280, 3072, 6, 2, 128, 24, 64, 256, 1, 65537, 131072, true,
            ),
            Preset::P3B => (
                32, 2560, 6144, 10, 2, 128, 32, 128, 256, 1, 65536, 131072, true,
            ),
            Preset::P7B => (
                44, 3072, 12288, 12, 2, 128, 24, 128, 256, 1, 130049, 262144, true,
            ),
            Preset::P34B => (
                72, 5120, 21504, 20, 4, 128, 32, 128, 256, 2, 261120, 262144, true,
            ),
        };
        let mut c = Config {
            vocab_size: v,
            hidden_size: d,
            intermediate_size: i,
            num_hidden_layers: l,
            num_attention_heads: hq,
            num_key_value_heads: hkv,
            head_dim: hd,
            rms_norm_eps: 1e-5,
            hidden_act: "silu".into(),
            max_position_embeddings: ctx,
            tie_word_embeddings: false,
            rope_theta: 1e11,
            mamba_d_ssm: h * pp,
            mamba_n_heads: h,
            mamba_d_head: pp,
            mamba_n_groups: g,
            mamba_d_state: n,
            mamba_d_conv: 4,
            mamba_chunk_size: 128,
            mamba_conv_bias: true,
            mamba_rms_norm: rms,
            mamba_norm_before_gate: false,
            time_step_limit: (0.0, f64::INFINITY),
            embedding_multiplier: 1.0,
            lm_head_multiplier: 1.0,
            key_multiplier: 1.0,
            attention_in_multiplier: 1.0,
            attention_out_multiplier: 1.0,
            ssm_in_multiplier: 1.0,
            ssm_out_multiplier: 1.0,
            mlp_multipliers: [1.0; 2],
            ssm_multipliers: [1.0; 5],
            bos_token_id: Some(1),
            eos_token_ids: vec![11],
            pad_token_id: Some(0),
        };
        if p == Preset::P0_5B {
            c.embedding_multiplier = 5.656854249492381;
            c.lm_head_multiplier = 0.0390625;
            c.key_multiplier = 0.39062499999999994;
            c.attention_out_multiplier = 0.9375;
            c.ssm_in_multiplier = 1.25;
            c.ssm_out_multiplier = 0.23570226039551587;
            c.mlp_multipliers = [0.8838834764831844, 0.5859375];
            c.ssm_multipliers = [
                0.3535533905932738,
                0.25,
                0.3535533905932738,
                0.5,
                0.3535533905932738,
            ];
        }
        c
    }
}

/// The released Falcon-H1 shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Falcon-H1-0.5B.
    P0_5B,
    /// Falcon-H1-1.5B.
    P1_5B,
    /// Falcon-H1-1.5B-Deep.
    P1_5BDeep,
    /// Falcon-H1-3B.
    P3B,
    /// Falcon-H1-7B.
    P7B,
    /// Falcon-H1-34B.
    P34B,
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Preset; 6] = [
        Preset::P0_5B,
        Preset::P1_5B,
        Preset::P1_5BDeep,
        Preset::P3B,
        Preset::P7B,
        Preset::P34B,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::P0_5B => "0.5b",
            Preset::P1_5B => "1.5b",
            Preset::P1_5BDeep => "1.5b-deep",
            Preset::P3B => "3b",
            Preset::P7B => "7b",
            Preset::P34B => "34b",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Preset> {
        let s = s.to_ascii_lowercase();
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown preset \"{s}\" (known: 0.5b, 1.5b, 1.5b-deep, 3b, 7b, 34b)"
                ))
            })
    }
}
