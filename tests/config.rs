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
    // num_key_value_heads: absent = HF's class default 8, null = num_attention_heads.
    let mut v = without("num_key_value_heads");
    v["num_attention_heads"] = json!(8);
    v["head_dim"] = json!(8);
    assert_eq!(parse(&v).unwrap().num_key_value_heads, 8);
    let c = parse(&with("num_key_value_heads", Value::Null)).unwrap();
    assert_eq!(c.num_key_value_heads, 4);
    err_naming(&without("num_key_value_heads"), "num_key_value_heads");
    let c = parse(&without("head_dim")).unwrap();
    assert_eq!(
        c.head_dim, 16,
        "head_dim falls back to hidden/heads only when absent"
    );
    // mamba_d_ssm: absent = HF's class default 1024, null = mamba_expand * hidden_size.
    let mut v = with("mamba_d_ssm", Value::Null);
    v["mamba_expand"] = json!(2);
    assert_eq!(parse(&v).unwrap().mamba_d_ssm, 128);
    let mut v = without("mamba_d_ssm");
    v["mamba_d_head"] = json!("auto");
    let c = parse(&v).unwrap();
    assert_eq!((c.mamba_d_ssm, c.mamba_d_head), (1024, 128));
    assert_eq!(
        parse(&without("mamba_chunk_size"))
            .unwrap()
            .mamba_chunk_size,
        256
    );
    assert!(parse(&without("mamba_conv_bias")).unwrap().mamba_conv_bias);
    assert_eq!(parse(&without("rms_norm_eps")).unwrap().rms_norm_eps, 1e-5);
    assert!(
        !parse(&with("mamba_conv_bias", json!(false)))
            .unwrap()
            .mamba_conv_bias
    );
    // Token ids: absent = HF's defaults (bos 1, eos 2, pad 0), null = none.
    let c = parse(&base()).unwrap();
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id),
        (Some(1), vec![2], Some(0))
    );
    let mut v = base();
    for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        v[k] = Value::Null;
    }
    let c = parse(&v).unwrap();
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id),
        (None, vec![], None)
    );
    err_naming(&with("eos_token_id", json!("two")), "eos_token_id");
    err_naming(&with("eos_token_id", json!([2, -1])), "eos_token_id");
    let c = parse(&with("mlp_multipliers", Value::Null)).unwrap();
    assert_eq!(c.mlp_multipliers, [1.0; 2]);
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
    let c = parse(&with("time_step_limit", json!([0.0, "Infinity"]))).unwrap();
    assert_eq!(c.time_step_limit, (0.0, f64::INFINITY));
    let c = parse(&with("time_step_limit", json!([0.0, null]))).unwrap();
    assert_eq!(c.time_step_limit, (0.0, f64::INFINITY));
    let c = parse(&with("some_unknown_key", json!("ignored"))).unwrap();
    assert_eq!(c.hidden_size, 64);
}

/// Python's json.dumps (save_pretrained) writes infinity as a bare `Infinity`, which is not JSON.
#[test]
fn python_infinity_tokens_are_read() {
    let text = base()
        .to_string()
        .replacen('{', r#"{"time_step_limit": [0.0, Infinity], "#, 1);
    let c = Config::from_json_str(&text).unwrap();
    assert_eq!(c.time_step_limit, (0.0, f64::INFINITY));
    // The same words inside strings are left alone.
    let mut v = base();
    v["hidden_act"] = json!("Infinity \" NaN");
    let e = parse(&v).unwrap_err().to_string();
    assert!(
        e.contains("hidden_act") && e.contains(r#""Infinity " NaN""#),
        "{e}"
    );
    // A NaN where a number must be is an error naming the key.
    let text = base()
        .to_string()
        .replacen('{', r#"{"key_multiplier": NaN, "#, 1);
    let e = Config::from_json_str(&text).unwrap_err().to_string();
    assert!(e.contains("key_multiplier"), "{e}");
    let text = base()
        .to_string()
        .replacen('{', r#"{"time_step_limit": [-Infinity, 1.0], "#, 1);
    let e = Config::from_json_str(&text).unwrap_err().to_string();
    assert!(e.contains("time_step_limit"), "{e}");
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
    err_naming(&v, "rope_parameters.rope_type");
    // rope_parameters wins over the top-level key, as in transformers 5.
    let mut v = base();
    v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 5e5});
    assert_eq!(parse(&v).unwrap().rope_theta, 5e5);
    // Without rope_theta in rope_parameters, the top-level one applies.
    let mut v = base();
    v["rope_parameters"] = json!({"rope_type": "default"});
    assert_eq!(parse(&v).unwrap().rope_theta, 1e11);
    // Legacy rope_scaling: null is fine, a scaling type is not implemented.
    assert_eq!(
        parse(&with("rope_scaling", Value::Null))
            .unwrap()
            .rope_theta,
        1e11
    );
    err_naming(
        &with("rope_scaling", json!({"type": "linear", "factor": 2.0})),
        "rope_scaling.type",
    );
    err_naming(
        &with("rope_parameters", json!("default")),
        "rope_parameters",
    );
    let mut v = without("rope_theta");
    v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": -1.0});
    err_naming(&v, "rope_parameters.rope_theta");
    err_naming(&with("rope_theta", json!(0.0)), "rope_theta");
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
    let mut v = with("mamba_n_heads", json!(7));
    v["mamba_d_head"] = json!("auto");
    err_naming(&v, "mamba_n_heads");
    err_naming(&with("mamba_d_conv", json!(9)), "mamba_d_conv");
    assert_eq!(
        parse(&with("mamba_d_conv", json!(1))).unwrap().mamba_d_conv,
        1
    );
    err_naming(&with("mlp_bias", json!(true)), "mlp_bias");
    err_naming(&with("projectors_bias", json!(true)), "projectors_bias");
    parse(&with("attention_bias", json!(false))).unwrap();
    assert_eq!(
        parse(&with("key_multiplier", Value::Null))
            .unwrap()
            .key_multiplier,
        1.0
    );
    err_naming(&with("time_step_limit", json!([0.1])), "time_step_limit");
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

/// The spec's table of released sizes, row by row.
#[test]
fn presets_match_the_spec_table() {
    // preset, [layers, d, I, Hq, Hkv, hd, H, P, N, G, Ds, vocab, context], mamba_rms_norm
    #[rustfmt::skip]
    let table = [
        (Preset::P0_5B, [36, 1024, 2048, 8, 2, 64, 24, 64, 128, 1, 1536, 32784, 16384], false),
        (Preset::P1_5B, [24, 2048, 4608, 8, 2, 128, 48, 64, 256, 1, 3072, 65537, 131072], true),
        (Preset::P1_5BDeep, [66, 1280, 3072, 6, 2, 128, 24, 64, 256, 1, 1536, 65537, 131072], true),
        (Preset::P3B, [32, 2560, 6144, 10, 2, 128, 32, 128, 256, 1, 4096, 65536, 131072], true),
        (Preset::P7B, [44, 3072, 12288, 12, 2, 128, 24, 128, 256, 1, 3072, 130049, 262144], true),
        (Preset::P34B, [72, 5120, 21504, 20, 4, 128, 32, 128, 256, 2, 4096, 261120, 262144], true),
    ];
    for (p, want, rms) in table {
        let c = Config::preset(p);
        c.validate().unwrap_or_else(|e| panic!("{p}: {e}"));
        let got = [
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.mamba_n_heads,
            c.mamba_d_head,
            c.mamba_d_state,
            c.mamba_n_groups,
            c.mamba_d_ssm,
            c.vocab_size,
            c.max_position_embeddings,
        ];
        assert_eq!(got, want, "{p}");
        assert_eq!(c.mamba_rms_norm, rms, "{p}");
        let l = want[0];
        // Shared by every release.
        assert_eq!(
            (
                c.mamba_chunk_size,
                c.mamba_d_conv,
                c.rope_theta,
                c.rms_norm_eps
            ),
            (128, 4, 1e11, 1e-5),
            "{p}"
        );
        assert!(
            c.mamba_conv_bias && !c.tie_word_embeddings && !c.mamba_norm_before_gate,
            "{p}"
        );
        assert_eq!(c.time_step_limit, (0.0, f64::INFINITY));
        if p != Preset::P0_5B {
            assert_eq!(
                c.key_multiplier, 1.0,
                "{p}: only 0.5B carries real multipliers"
            );
            assert_eq!(c.ssm_multipliers, [1.0; 5], "{p}");
        }
        assert_eq!(p.to_string().parse::<Preset>().unwrap(), p);
        assert!(
            c.summary().contains(&format!("{l} layers")),
            "{}",
            c.summary()
        );
    }
    assert_eq!(Preset::ALL.len(), 6);
    assert_eq!("1.5B-Deep".parse::<Preset>().unwrap(), Preset::P1_5BDeep);
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

/// `FalconH1Config().to_json_file(use_diff=False)` from transformers 5.17, verbatim: every key
/// HF writes, and infinity as `{"__float__": "Infinity"}`.
const HF_5_17_DEFAULTS: &str = r#"{"_name_or_path":"","architectures":null,"attention_bias":false,"attention_dropout":0.0,"attention_in_multiplier":1.0,"attention_out_multiplier":1.0,"bos_token_id":1,"chunk_size_feed_forward":0,"dtype":null,"embedding_multiplier":1.0,"eos_token_id":2,"hidden_act":"silu","hidden_size":4096,"id2label":{"0":"LABEL_0","1":"LABEL_1"},"initializer_range":0.02,"intermediate_size":14336,"is_encoder_decoder":false,"key_multiplier":1.0,"label2id":{"LABEL_0":0,"LABEL_1":1},"lm_head_multiplier":1.0,"mamba_chunk_size":256,"mamba_conv_bias":true,"mamba_d_conv":4,"mamba_d_head":8,"mamba_d_ssm":1024,"mamba_d_state":256,"mamba_expand":2,"mamba_n_groups":1,"mamba_n_heads":128,"mamba_norm_before_gate":true,"mamba_proj_bias":false,"mamba_rms_norm":false,"max_position_embeddings":8192,"mlp_bias":false,"mlp_multipliers":[1.0,1.0],"model_type":"falcon_h1","num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,"num_logits_to_keep":1,"output_attentions":false,"output_hidden_states":false,"pad_token_id":0,"problem_type":null,"projectors_bias":false,"return_dict":true,"rms_norm_eps":1e-05,"rope_parameters":{"rope_theta":10000.0,"rope_type":"default"},"ssm_in_multiplier":1.0,"ssm_multipliers":[1.0,1.0,1.0,1.0,1.0],"ssm_out_multiplier":1.0,"tie_word_embeddings":false,"time_step_limit":[0.0,{"__float__":"Infinity"}],"transformers_version":"5.17.0","use_cache":true,"vocab_size":128000}"#;

#[test]
fn hf_written_config_and_empty_config_give_hf_defaults() {
    let hf = Config::from_json_str(HF_5_17_DEFAULTS).unwrap();
    // An empty object takes every class default: the same config as HF's own dump.
    assert_eq!(Config::from_json_str("{}").unwrap(), hf);
    assert_eq!(
        (
            hf.vocab_size,
            hf.hidden_size,
            hf.intermediate_size,
            hf.num_hidden_layers
        ),
        (128000, 4096, 14336, 32)
    );
    assert_eq!(
        (hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim),
        (32, 8, 128)
    );
    assert_eq!(
        (
            hf.mamba_d_ssm,
            hf.mamba_n_heads,
            hf.mamba_d_head,
            hf.mamba_d_state
        ),
        (1024, 128, 8, 256)
    );
    assert_eq!((hf.mamba_chunk_size, hf.mamba_d_conv), (256, 4));
    assert!(hf.mamba_norm_before_gate && !hf.mamba_rms_norm && hf.mamba_conv_bias);
    assert_eq!(hf.time_step_limit, (0.0, f64::INFINITY));
    assert_eq!((hf.rope_theta, hf.max_position_embeddings), (10000.0, 8192));
    assert_eq!((hf.bos_token_id, hf.pad_token_id), (Some(1), Some(0)));
    assert_eq!(hf.eos_token_ids, vec![2]);
    // Tagged floats anywhere: a finite low bound of the clamp, and a NaN multiplier (rejected).
    let text = HF_5_17_DEFAULTS.replace(
        r#""time_step_limit":[0.0,"#,
        r#""time_step_limit":[{"__float__":"-Infinity"},"#,
    );
    err_naming(&serde_json::from_str(&text).unwrap(), "time_step_limit");
    let text = HF_5_17_DEFAULTS.replace(
        r#""key_multiplier":1.0"#,
        r#""key_multiplier":{"__float__":"NaN"}"#,
    );
    err_naming(&serde_json::from_str(&text).unwrap(), "key_multiplier");
}
