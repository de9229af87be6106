//! config.json parsing, HF defaults, validation errors that name the field, presets.

use falcon_h1_kernels::config::{Config, Preset};
use serde_json::{json, Value};

fn base() -> Value {
    json!({
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "mamba_d_ssm": 128, "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_n_groups": 1,
        "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_chunk_size": 16, "mamba_rms_norm": true,
        "mamba_norm_before_gate": false, "rope_theta": 1e11
    })
}

fn parse(v: &Value) -> falcon_h1_kernels::Result<Config> {
    Config::from_json_str(&v.to_string())
}

fn with(key: &str, val: Value) -> Value {
    let mut v = base();
    v[key] = val;
    v
}

fn without(key: &str) -> Value {
    let mut v = base();
    v.as_object_mut().unwrap().remove(key);
    v
}

/// The error message of a config that must be rejected; it must name `field`.
fn err_naming(v: &Value, field: &str) -> String {
    let e = parse(v).expect_err("config must be rejected").to_string();
    assert!(e.contains(field), "error `{e}` does not name `{field}`");
    e
}

#[test]
fn base_parses_with_every_field() {
    let c = parse(&base()).unwrap();
    assert_eq!(c.head_dim, 32);
    assert_eq!(c.conv_dim(), 128 + 2 * 16);
    assert_eq!(c.in_proj_dim(), 2 * 128 + 2 * 16 + 8);
    assert_eq!(c.rope_theta, 1e11);
    assert!(!c.mamba_norm_before_gate);
    assert_eq!(c.time_step_limit, (0.0, f64::INFINITY));
    assert_eq!(c.mlp_multipliers, [1.0, 1.0]);
    assert_eq!(c.ssm_multipliers, [1.0; 5]);
}

#[test]
fn hf_defaults_apply_where_keys_are_absent() {
    // HF's FalconH1Config defaults to norm_before_gate = True: a config without the key changes the order.
    assert!(
        parse(&without("mamba_norm_before_gate"))
            .unwrap()
            .mamba_norm_before_gate
    );
    assert!(!parse(&without("mamba_rms_norm")).unwrap().mamba_rms_norm);
    let c = parse(&without("num_key_value_heads")).unwrap();
    assert_eq!(c.num_key_value_heads, 4);
    let c = parse(&without("head_dim")).unwrap();
    assert_eq!(
        c.head_dim, 16,
        "head_dim falls back to hidden/heads only when absent"
    );
    let mut v = without("mamba_d_ssm");
    v["mamba_expand"] = json!(2);
    assert_eq!(parse(&v).unwrap().mamba_d_ssm, 128);
    let c = parse(&with("eos_token_id", json!([2, 11]))).unwrap();
    assert_eq!(c.eos_token_ids, vec![2, 11]);
    assert_eq!(
        parse(&with("eos_token_id", json!(5)))
            .unwrap()
            .eos_token_ids,
        vec![5]
    );
    let c = parse(&with("time_step_limit", json!([0.001, "inf"]))).unwrap();
    assert_eq!(c.time_step_limit, (0.001, f64::INFINITY));
    let c = parse(&with("time_step_limit", Value::Null)).unwrap();
    assert_eq!(c.time_step_limit, (0.0, f64::INFINITY));
    let c = parse(&with("some_unknown_key", json!("ignored"))).unwrap();
    assert_eq!(c.hidden_size, 64);
}

#[test]
fn mamba_d_head_auto() {
    assert_eq!(
        parse(&with("mamba_d_head", json!("auto")))
            .unwrap()
            .mamba_d_head,
        16
    );
    assert_eq!(parse(&without("mamba_d_head")).unwrap().mamba_d_head, 16);
    err_naming(&with("mamba_d_head", json!("big")), "mamba_d_head");
}

#[test]
fn both_rope_theta_spellings() {
    let mut v = without("rope_theta");
    v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 5e5});
    assert_eq!(parse(&v).unwrap().rope_theta, 5e5);
    assert_eq!(parse(&without("rope_theta")).unwrap().rope_theta, 10000.0);
    let mut v = without("rope_theta");
    v["rope_parameters"] = json!({"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0});
    err_naming(&v, "rope_type");
}

#[test]
fn each_bad_config_gives_its_named_error() {
    let e = err_naming(&with("mamba_d_head", json!(32)), "mamba_d_head");
    assert!(e.contains("128"), "{e}");
    let e = err_naming(
        &with("num_key_value_heads", json!(3)),
        "num_key_value_heads",
    );
    assert!(e.contains('4') && e.contains('3'), "{e}");
    err_naming(&with("mamba_n_groups", json!(3)), "mamba_n_groups");
    for field in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "head_dim",
        "mamba_d_state",
        "mamba_d_conv",
        "mamba_chunk_size",
    ] {
        err_naming(&with(field, json!(0)), field);
    }
    err_naming(&with("hidden_act", json!("gelu")), "hidden_act");
    err_naming(&with("mlp_multipliers", json!([1.0])), "mlp_multipliers");
    err_naming(
        &with("ssm_multipliers", json!([1.0, 2.0])),
        "ssm_multipliers",
    );
    err_naming(&with("attention_bias", json!(true)), "attention_bias");
    err_naming(&with("mamba_proj_bias", json!(true)), "mamba_proj_bias");
    err_naming(
        &with("time_step_limit", json!([0.5, 0.1])),
        "time_step_limit",
    );
    err_naming(&with("head_dim", json!(7)), "head_dim");
    err_naming(&with("rms_norm_eps", json!(-1.0)), "rms_norm_eps");
    // Wrong JSON types and broken JSON are parse errors that name the key or the place.
    err_naming(&with("hidden_size", json!("big")), "hidden_size");
    assert!(Config::from_json_str("{not json").is_err());
    let e = Config::from_file("/nonexistent/config.json".as_ref())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/config.json"), "{e}");
}

#[test]
fn presets_have_the_released_shapes_and_validate() {
    for p in Preset::ALL {
        let c = Config::preset(p);
        c.validate().unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(p.name().parse::<Preset>().unwrap(), p);
        assert_eq!(c.mamba_chunk_size, 128);
        assert_eq!(c.rope_theta, 1e11);
    }
    let c = Config::preset(Preset::P7B);
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.vocab_size
        ),
        (44, 3072, 12288, 130049)
    );
    assert_eq!(
        (
            c.mamba_n_heads,
            c.mamba_d_head,
            c.mamba_d_state,
            c.mamba_n_groups,
            c.mamba_d_ssm
        ),
        (24, 128, 256, 1, 3072)
    );
    let c = Config::preset(Preset::P34B);
    assert_eq!(
        (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.mamba_n_groups
        ),
        (20, 4, 2)
    );
    let c = Config::preset(Preset::P0_5B);
    assert_eq!(
        (c.head_dim, c.hidden_size / c.num_attention_heads),
        (64, 128)
    );
    assert!(!c.mamba_rms_norm);
    assert_eq!(c.ssm_out_multiplier, 0.23570226039551587);
    let c = Config::preset(Preset::P1_5BDeep);
    assert_eq!((c.num_hidden_layers, c.hidden_size), (66, 1280));
    assert!("13b".parse::<Preset>().is_err());
}
