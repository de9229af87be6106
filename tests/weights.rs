//! Safetensors checkpoints: single file and sharded, dtype conversion, named errors for missing
//! tensors, wrong shapes and broken files, and the multiplier folding.

use falcon_h1_kernels::config::Config;
use falcon_h1_kernels::weights::{Checkpoint, ModelWeights};
use falcon_h1_kernels::Error;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn tiny_config() -> Config {
    Config::from_json_str(
        r#"{"vocab_size": 32, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
            "mamba_d_ssm": 8, "mamba_n_heads": 2, "mamba_d_head": 4, "mamba_n_groups": 1,
            "mamba_d_state": 4, "mamba_d_conv": 3, "mamba_chunk_size": 4, "mamba_rms_norm": true,
            "key_multiplier": 0.5, "attention_in_multiplier": 2.0, "attention_out_multiplier": 3.0,
            "ssm_in_multiplier": 1.5, "ssm_out_multiplier": 0.25, "embedding_multiplier": 4.0,
            "lm_head_multiplier": 0.125, "mlp_multipliers": [0.75, 0.5],
            "ssm_multipliers": [2.0, 3.0, 5.0, 7.0, 11.0]}"#,
    )
    .unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fh1-weights-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every tensor of `cfg` in HF names with distinct values, as (name, shape, f32 data).
fn tensors(cfg: &Config) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let w = ModelWeights::random(cfg, 7);
    let mut m = BTreeMap::new();
    let mut put = |n: String, t: &falcon_h1_kernels::tensor::HostTensor, shape: Vec<usize>| {
        m.insert(n, (shape, t.data.clone()));
    };
    put(
        "model.embed_tokens.weight".into(),
        &w.embed_tokens,
        w.embed_tokens.shape.clone(),
    );
    put(
        "model.final_layernorm.weight".into(),
        &w.final_layernorm,
        w.final_layernorm.shape.clone(),
    );
    put("lm_head.weight".into(), &w.lm_head, w.lm_head.shape.clone());
    for (i, l) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        put(
            p("input_layernorm.weight"),
            &l.input_layernorm,
            l.input_layernorm.shape.clone(),
        );
        put(
            p("pre_ff_layernorm.weight"),
            &l.pre_ff_layernorm,
            l.pre_ff_layernorm.shape.clone(),
        );
        put(
            p("self_attn.q_proj.weight"),
            &l.q_proj,
            l.q_proj.shape.clone(),
        );
        put(
            p("self_attn.k_proj.weight"),
            &l.k_proj,
            l.k_proj.shape.clone(),
        );
        put(
            p("self_attn.v_proj.weight"),
            &l.v_proj,
            l.v_proj.shape.clone(),
        );
        put(
            p("self_attn.o_proj.weight"),
            &l.o_proj,
            l.o_proj.shape.clone(),
        );
        put(
            p("mamba.in_proj.weight"),
            &l.in_proj,
            l.in_proj.shape.clone(),
        );
        let cw = &l.conv_weight;
        put(
            p("mamba.conv1d.weight"),
            cw,
            vec![cw.shape[0], 1, cw.shape[1]],
        );
        let cb = l.conv_bias.as_ref().unwrap();
        put(p("mamba.conv1d.bias"), cb, cb.shape.clone());
        put(p("mamba.dt_bias"), &l.dt_bias, l.dt_bias.shape.clone());
        put(p("mamba.A_log"), &l.a_log, l.a_log.shape.clone());
        put(p("mamba.D"), &l.d, l.d.shape.clone());
        let n = l.norm.as_ref().unwrap();
        put(p("mamba.norm.weight"), n, n.shape.clone());
        put(
            p("mamba.out_proj.weight"),
            &l.out_proj,
            l.out_proj.shape.clone(),
        );
        put(
            p("feed_forward.gate_proj.weight"),
            &l.gate_proj,
            l.gate_proj.shape.clone(),
        );
        put(
            p("feed_forward.up_proj.weight"),
            &l.up_proj,
            l.up_proj.shape.clone(),
        );
        put(
            p("feed_forward.down_proj.weight"),
            &l.down_proj,
            l.down_proj.shape.clone(),
        );
    }
    m
}

fn encode(dtype: Dtype, data: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => data
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::F16 => data
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => unreachable!(),
    }
}

fn write(path: &std::path::Path, items: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, dtype: Dtype) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = items
        .iter()
        .map(|(n, (s, d))| (n.clone(), s.clone(), encode(dtype, d)))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn single_file_and_sharded_load_the_same_weights() {
    let cfg = tiny_config();
    let all = tensors(&cfg);
    let one = temp_dir("single");
    write(&one.join("model.safetensors"), &all, Dtype::F32);
    let sharded = temp_dir("sharded");
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) = all
        .clone()
        .into_iter()
        .partition(|(n, _)| !n.contains("layers.1."));
    write(
        &sharded.join("model-00001-of-00002.safetensors"),
        &a,
        Dtype::F32,
    );
    write(
        &sharded.join("model-00002-of-00002.safetensors"),
        &b,
        Dtype::F32,
    );
    let mut map = serde_json::Map::new();
    for n in a.keys() {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for n in b.keys() {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let w1 = ModelWeights::load(&Checkpoint::open(&one).unwrap(), &cfg, false).unwrap();
    let w2 = ModelWeights::load(&Checkpoint::open(&sharded).unwrap(), &cfg, false).unwrap();
    assert_eq!(w1.layers[1].in_proj, w2.layers[1].in_proj);
    assert_eq!(w1.embed_tokens, w2.embed_tokens);
    assert_eq!(
        w1.layers[0].conv_weight.shape,
        vec![cfg.conv_dim(), 3],
        "conv weight squeezed"
    );
    assert_eq!(
        w1.layers[0].q_proj.data,
        all["model.layers.0.self_attn.q_proj.weight"].1
    );

    // An index naming a file that does not hold the tensor is an error naming the index.
    let mut bad = map.clone();
    bad.insert(
        "model.layers.0.mamba.D".into(),
        "model-00002-of-00002.safetensors".into(),
    );
    let index = serde_json::json!({"weight_map": bad});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let e = Checkpoint::open(&sharded).err().unwrap().to_string();
    assert!(
        e.contains("model.layers.0.mamba.D") && e.contains("index"),
        "{e}"
    );
    std::fs::write(sharded.join("model.safetensors.index.json"), "{broken").unwrap();
    assert!(matches!(
        Checkpoint::open(&sharded),
        Err(Error::Safetensors { .. })
    ));
}

#[test]
fn bf16_and_f16_convert_to_f32() {
    let cfg = tiny_config();
    let all = tensors(&cfg);
    for dtype in [Dtype::BF16, Dtype::F16] {
        let d = temp_dir(&format!("{dtype:?}"));
        write(&d.join("model.safetensors"), &all, dtype);
        let w = ModelWeights::load(&Checkpoint::open(&d).unwrap(), &cfg, false).unwrap();
        let want = &all["model.layers.1.feed_forward.up_proj.weight"].1;
        for (g, x) in w.layers[1].up_proj.data.iter().zip(want) {
            let rounded = match dtype {
                Dtype::BF16 => half::bf16::from_f32(*x).to_f32(),
                _ => half::f16::from_f32(*x).to_f32(),
            };
            assert_eq!(*g, rounded);
        }
    }
}

#[test]
fn missing_tensor_and_wrong_shape_are_named() {
    let cfg = tiny_config();
    let mut all = tensors(&cfg);
    all.remove("model.layers.1.mamba.A_log");
    let d = temp_dir("missing");
    write(&d.join("model.safetensors"), &all, Dtype::F32);
    let e = ModelWeights::load(&Checkpoint::open(&d).unwrap(), &cfg, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.1.mamba.A_log") && e.contains("[2]"),
        "{e}"
    );

    let mut all = tensors(&cfg);
    all.insert(
        "model.layers.0.self_attn.k_proj.weight".into(),
        (vec![8, 8], vec![0.0; 64]),
    );
    let d = temp_dir("shape");
    write(&d.join("model.safetensors"), &all, Dtype::F32);
    let e = ModelWeights::load(&Checkpoint::open(&d).unwrap(), &cfg, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.weight")
            && e.contains("[4, 8]")
            && e.contains("[8, 8]"),
        "{e}"
    );
}

#[test]
fn broken_files_are_errors_not_panics() {
    let cfg = tiny_config();
    let all = tensors(&cfg);
    let d = temp_dir("broken");
    let path = d.join("model.safetensors");
    write(&path, &all, Dtype::F32);
    let full = std::fs::read(&path).unwrap();
    // Truncated anywhere: in the data, in the header, before the header length.
    for cut in [full.len() - 1, full.len() / 2, 20, 4, 0] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let r = Checkpoint::open(&d);
        assert!(
            matches!(r, Err(Error::Safetensors { .. })),
            "cut at {cut}: {:?}",
            r.err()
        );
    }
    // A header length that points past the end, and a header that is not JSON.
    let mut garbage = (1u64 << 40).to_le_bytes().to_vec();
    garbage.extend_from_slice(b"{}");
    std::fs::write(&path, &garbage).unwrap();
    assert!(matches!(
        Checkpoint::open(&d),
        Err(Error::Safetensors { .. })
    ));
    let mut garbage = 16u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"this is not json");
    std::fs::write(&path, &garbage).unwrap();
    let e = Checkpoint::open(&d).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // No file at all names the path.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(Checkpoint::open(&d), Err(Error::Io { .. })));
    // An unsupported dtype is named.
    let bytes = vec![0u8; 8];
    let view = TensorView::new(Dtype::I32, vec![2], &bytes).unwrap();
    safetensors::serialize_to_file(vec![("ints".to_string(), view)], None, &path).unwrap();
    let e = Checkpoint::open(&d)
        .unwrap()
        .tensor_any_f32("ints")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ints") && e.contains("I32"), "{e}");
}

#[test]
fn tied_embeddings_copy_the_table() {
    let mut cfg = tiny_config();
    cfg.tie_word_embeddings = true;
    let mut all = tensors(&cfg);
    all.remove("lm_head.weight");
    let d = temp_dir("tied");
    write(&d.join("model.safetensors"), &all, Dtype::F32);
    let w = ModelWeights::load(&Checkpoint::open(&d).unwrap(), &cfg, false).unwrap();
    assert_eq!(w.lm_head, w.embed_tokens);
    // Folding scales each copy by its own multiplier.
    let f = w.clone().fold_multipliers(&cfg);
    assert_eq!(f.embed_tokens.data[3], w.embed_tokens.data[3] * 4.0);
    assert_eq!(f.lm_head.data[3], w.lm_head.data[3] * 0.125);
}

#[test]
fn folding_applies_each_multiplier_once() {
    let cfg = tiny_config();
    let w = ModelWeights::random(&cfg, 3);
    let f = w.clone().fold_multipliers(&cfg);
    let (l, fl) = (&w.layers[0], &f.layers[0]);
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b.abs().max(1e-6);
    assert!(close(fl.k_proj.data[5], l.k_proj.data[5] * 0.5 * 2.0));
    assert!(close(fl.q_proj.data[5], l.q_proj.data[5] * 2.0));
    assert!(close(fl.v_proj.data[5], l.v_proj.data[5] * 2.0));
    assert!(close(fl.o_proj.data[5], l.o_proj.data[5] * 3.0));
    assert!(close(fl.out_proj.data[5], l.out_proj.data[5] * 0.25));
    assert!(close(fl.gate_proj.data[5], l.gate_proj.data[5] * 0.75));
    assert!(close(fl.down_proj.data[5], l.down_proj.data[5] * 0.5));
    assert_eq!(fl.up_proj, l.up_proj);
    // in_proj rows [z 8 | x 8 | B 4 | C 4 | dt 2] times ssm_in * ssm_multipliers[segment].
    let d = cfg.hidden_size;
    for (row, m) in [
        (0, 2.0),
        (8, 3.0),
        (16, 5.0),
        (20, 7.0),
        (24, 11.0),
        (25, 11.0),
    ] {
        let i = row * d + 1;
        assert!(
            close(fl.in_proj.data[i], l.in_proj.data[i] * 1.5 * m),
            "row {row}"
        );
    }
    // Norms, conv, dt_bias, A_log, D are never scaled.
    assert_eq!(fl.dt_bias, l.dt_bias);
    assert_eq!(fl.conv_weight, l.conv_weight);
    assert_eq!(fl.norm, l.norm);
}
