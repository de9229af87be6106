//! Safetensors checkpoints: single file and sharded, dtype conversion, named errors for missing
//! tensors, wrong shapes and broken files, and the multiplier folding.

use falcon_h1_kernels::config::Config;
use falcon_h1_kernels::weights::{concat_rows, Checkpoint, ModelWeights};
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
    // in_proj rows [z 8 | x 8 | B 4 | C 4 | dt 2] times ssm_in * ssm_multipliers[segment],
    // every element of every layer (segment edges included).
    let d = cfg.hidden_size;
    let seg = |row: usize| match row {
        0..=7 => 2.0,
        8..=15 => 3.0,
        16..=19 => 5.0,
        20..=23 => 7.0,
        _ => 11.0,
    };
    assert_eq!(cfg.in_proj_dim(), 26);
    for (l, fl) in w.layers.iter().zip(&f.layers) {
        for (i, (x, y)) in l.in_proj.data.iter().zip(&fl.in_proj.data).enumerate() {
            assert!(close(*y, x * 1.5 * seg(i / d)), "in_proj row {}", i / d);
        }
    }
    assert!(close(f.embed_tokens.data[7], w.embed_tokens.data[7] * 4.0));
    assert!(close(f.lm_head.data[7], w.lm_head.data[7] * 0.125));
    assert_eq!(f.final_layernorm, w.final_layernorm);
    assert_eq!(fl.input_layernorm, l.input_layernorm);
    assert_eq!(fl.a_log, l.a_log);
    assert_eq!(fl.d, l.d);
    assert_eq!(fl.conv_bias, l.conv_bias);
    // Norms, conv, dt_bias, A_log, D are never scaled.
    assert_eq!(fl.dt_bias, l.dt_bias);
    assert_eq!(fl.conv_weight, l.conv_weight);
    assert_eq!(fl.norm, l.norm);
}

/// Writes raw (name, dtype, shape, bytes) tensors to `<dir>/model.safetensors`.
fn write_raw(dir: &std::path::Path, items: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> = items
        .iter()
        .map(|(n, dt, s, b)| (n.to_string(), TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn exact_dtype_conversion_ids_and_lookups() {
    let d = temp_dir("dtypes");
    let le16 = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // bf16: 1.0, -2.0, 0.5, 65280 (0x477F), smallest subnormal; f16: 1.0, -2.0, 65504, 2^-24.
    let bf = le16(&[0x3F80, 0xC000, 0x3F00, 0x477F, 0x0001]);
    let hf = le16(&[0x3C00, 0xC000, 0x7BFF, 0x0001]);
    // Big enough for the parallel conversion path: value i is i mod 256 (exact in bf16).
    let big_n = (1 << 20) + 3;
    let big: Vec<u8> = (0..big_n)
        .flat_map(|i| half::bf16::from_f32((i % 256) as f32).to_le_bytes())
        .collect();
    let ids: Vec<u8> = [5i64, -1, 1 << 40]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let f32s: Vec<u8> = [1.5f32, -0.25]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    write_raw(
        &d,
        &[
            ("bf", Dtype::BF16, vec![5], bf),
            ("hf", Dtype::F16, vec![2, 2], hf),
            ("big", Dtype::BF16, vec![big_n], big),
            ("input_ids", Dtype::I64, vec![1, 3], ids),
            ("f", Dtype::F32, vec![2], f32s),
        ],
    );
    let c = Checkpoint::open(&d).unwrap();
    assert_eq!(
        c.tensor_f32("bf", &[5]).unwrap().data,
        vec![1.0, -2.0, 0.5, 65280.0, f32::from_bits(1 << 16)]
    );
    let h = c.tensor_f32("hf", &[2, 2]).unwrap();
    assert_eq!(h.shape, vec![2, 2]);
    assert_eq!(h.data, vec![1.0, -2.0, 65504.0, 2f32.powi(-24)]);
    assert_eq!(c.tensor_any_f32("f").unwrap().data, vec![1.5, -0.25]);
    let b = c.tensor_any_f32("big").unwrap();
    assert!(b
        .data
        .iter()
        .enumerate()
        .all(|(i, v)| *v == (i % 256) as f32));
    assert_eq!(
        c.tensor_i64("input_ids").unwrap(),
        (vec![1, 3], vec![5, -1, 1 << 40])
    );
    // Ids are not floats and floats are not ids: both errors name the tensor and the dtype.
    let e = c.tensor_any_f32("input_ids").unwrap_err().to_string();
    assert!(e.contains("input_ids") && e.contains("I64"), "{e}");
    let e = c.tensor_i64("f").unwrap_err().to_string();
    assert!(e.contains("`f`") && e.contains("F32"), "{e}");
    // Lookups.
    assert!(c.contains("bf") && !c.contains("nope"));
    assert_eq!(c.shape("hf"), Some(vec![2, 2]));
    assert_eq!(c.shape("nope"), None);
    assert_eq!(c.names(), vec!["bf", "big", "f", "hf", "input_ids"]);
    let e = c.tensor_f32("hf", &[4]).unwrap_err().to_string();
    assert!(e.contains("[4]") && e.contains("[2, 2]"), "{e}");
    assert!(matches!(
        c.tensor_f32("nope", &[1]),
        Err(Error::MissingTensor { .. })
    ));
}

#[test]
fn optional_tensors_follow_the_config() {
    // No conv bias and no gated norm: the file need not hold them, and the weights have none.
    let full = tiny_config();
    let mut cfg = full.clone();
    cfg.mamba_conv_bias = false;
    cfg.mamba_rms_norm = false;
    let mut all = tensors(&full);
    all.retain(|n, _| !n.ends_with("conv1d.bias") && !n.ends_with("mamba.norm.weight"));
    let d = temp_dir("optional");
    write(&d.join("model.safetensors"), &all, Dtype::F32);
    let ckpt = Checkpoint::open(&d).unwrap();
    let w = ModelWeights::load(&ckpt, &cfg, true).unwrap();
    assert!(w
        .layers
        .iter()
        .all(|l| l.conv_bias.is_none() && l.norm.is_none()));
    // The released layout (conv bias, gated norm) then names the first tensor it misses.
    let e = ModelWeights::load(&ckpt, &full, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv1d.bias") || e.contains("mamba.norm.weight"),
        "{e}"
    );
    // An invalid config is refused before anything is read.
    let mut bad = cfg.clone();
    bad.mamba_d_head = 3;
    assert!(matches!(
        ModelWeights::load(&ckpt, &bad, false),
        Err(Error::ConfigInvalid { .. })
    ));
}

#[test]
fn a_shard_the_index_names_must_exist() {
    let cfg = tiny_config();
    let d = temp_dir("noshard");
    write(
        &d.join("model-00001-of-00002.safetensors"),
        &tensors(&cfg),
        Dtype::F32,
    );
    let index = serde_json::json!({"weight_map": {
        "lm_head.weight": "model-00002-of-00002.safetensors",
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors"}});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = Checkpoint::open(&d).err().unwrap();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("model-00002-of-00002"), "{e}");
    // An index without a weight_map is named.
    std::fs::write(d.join("model.safetensors.index.json"), "{\"metadata\": {}}").unwrap();
    let e = Checkpoint::open(&d).err().unwrap().to_string();
    assert!(e.contains("weight_map"), "{e}");
    // No checkpoint at all: the error names model.safetensors.
    let empty = temp_dir("empty");
    let e = Checkpoint::open(&empty).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn random_weights_are_deterministic_and_well_scaled() {
    let cfg = tiny_config();
    let (a, b, c) = (
        ModelWeights::random(&cfg, 1),
        ModelWeights::random(&cfg, 1),
        ModelWeights::random(&cfg, 2),
    );
    assert_eq!(a.embed_tokens, b.embed_tokens);
    assert_eq!(a.layers[1].in_proj, b.layers[1].in_proj);
    assert_ne!(a.layers[1].in_proj, c.layers[1].in_proj);
    assert_ne!(a.layers[0].in_proj, a.layers[1].in_proj, "layers differ");
    assert_ne!(a.lm_head, a.embed_tokens);
    let d = cfg.hidden_size as f32;
    for l in &a.layers {
        let softplus = |x: f32| x.exp().ln_1p();
        assert!(l
            .dt_bias
            .data
            .iter()
            .all(|&x| (0.99e-3..=0.101).contains(&softplus(x))));
        assert!(l.a_log.data.iter().all(|&x| (0.0..16f32.ln()).contains(&x)));
        assert!(l.in_proj.data.iter().all(|x| x.abs() <= 1.0 / d.sqrt()));
        assert!(l.conv_weight.data.iter().all(|x| x.abs() <= 0.5));
        assert!(l.d.data.iter().all(|x| (0.9..=1.1).contains(x)));
        assert!(l.norm.is_some() && l.conv_bias.is_some());
        assert_eq!(l.conv_weight.shape, vec![cfg.conv_dim(), cfg.mamba_d_conv]);
        assert_eq!(l.in_proj.shape, vec![cfg.in_proj_dim(), cfg.hidden_size]);
    }
    // Tied: the head is the table, and the layers do not change.
    let mut tied = cfg.clone();
    tied.tie_word_embeddings = true;
    let t = ModelWeights::random(&tied, 1);
    assert_eq!(t.lm_head, t.embed_tokens);
    assert_eq!(t.layers[1].in_proj, a.layers[1].in_proj);
}

#[test]
fn fused_projections_stack_the_folded_rows_in_order() {
    use falcon_h1_kernels::tensor::HostTensor;
    let cfg = tiny_config();
    let w = ModelWeights::random(&cfg, 5);
    let f = w.clone().fold_multipliers(&cfg);
    let d = cfg.hidden_size;
    for (l, fl) in w.layers.iter().zip(&f.layers) {
        // [q | k | v | in_proj], each part exactly the folded weight (its own multipliers).
        let qkv = fl.input_projections().unwrap();
        let (q, kv) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        assert_eq!(qkv.shape, vec![q + 2 * kv + cfg.in_proj_dim(), d]);
        let mut at = 0;
        for part in [&fl.q_proj, &fl.k_proj, &fl.v_proj, &fl.in_proj] {
            assert_eq!(&qkv.data[at..at + part.len()], &part.data[..]);
            at += part.len();
        }
        assert_eq!(at, qkv.len());
        // k keeps key_multiplier * attention_in_multiplier, v only the latter.
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b.abs().max(1e-6);
        assert!(close(qkv.data[q * d + 3], l.k_proj.data[3] * 0.5 * 2.0));
        assert!(close(qkv.data[(q + kv) * d + 3], l.v_proj.data[3] * 2.0));
        // [gate | up]: gate scaled by mlp_multipliers[0], up untouched.
        let gu = fl.gate_up_proj().unwrap();
        assert_eq!(gu.shape, vec![2 * cfg.intermediate_size, d]);
        let (g, u) = gu.data.split_at(fl.gate_proj.len());
        assert_eq!(g, &fl.gate_proj.data[..]);
        assert_eq!(u, &l.up_proj.data[..]);
    }
    // Shapes that cannot stack are errors, not panics.
    let a = HostTensor::zeros(vec![2, 3]);
    assert!(concat_rows(&[]).is_err());
    assert!(concat_rows(&[&a, &HostTensor::zeros(vec![2, 4])]).is_err());
    assert!(concat_rows(&[&a, &HostTensor::zeros(vec![6])]).is_err());
    assert!(concat_rows(&[&HostTensor::zeros(vec![6]), &a]).is_err());
    assert_eq!(concat_rows(&[&a, &a]).unwrap().shape, vec![4, 3]);
}
