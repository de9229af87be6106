"""Golden outputs of HF transformers' FalconH1ForCausalLM for the Rust tests.

Builds small random Falcon-H1 models in float32 on the CPU (eager attention), saves each as
tests/data/<name>/{config.json, model.safetensors, reference.safetensors}, and op-level goldens of
HF's own torch SSD and conv functions in tests/data/ops/. Deterministic: every variant and op golden
has its own seed (VARIANTS and OP_SEEDS below), recorded in the metadata of each file it writes, and
the safetensors headers are written in a fixed order, so a rerun gives byte-identical files.

    python python-ref/make_goldens.py [--out tests/data]

reference.safetensors (f32 unless said; the format is in tests/data/README.md):
  input_ids        I64 [B, L]   the prompts
  logits           [B, L, V]    one forward over the prompts (use_cache=False)
  hidden_states.i  [B, L, d]    output of decoder layer i (forward hooks); a file may hold only some layers
  decode_ids       I64 [B, S]   greedy continuation of S steps (generate, one sequence at a time:
                                HF 5.17 is wrong for batched one-token steps with mamba_rms_norm)
  decode_logits    [B, S, V]    the logits that chose decode_ids[:, s]; decode_logits[:, 0] == logits[:, -1]

Checks made on every run (any failure aborts): HF reads back the config as intended; the batched prompt
forward equals each prompt alone; generate with the cache equals greedy recomputation without it (tokens
identical, logits within 1e-4 relative L2); the last prompt logits are far from uniform; every known trap
of the spec that applies (a multiplier dropped, gate/norm order, B/C group mapping, ...) moves the logits by
more than 1e-3; HF's SSD and conv run their torch code and agree with a plain sequential f64 reference.
"""

import argparse
import importlib.util
import json
import math
import os
import struct
import tempfile

import torch
import transformers
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from transformers import FalconH1Config, FalconH1ForCausalLM
from transformers.models.falcon_h1 import modeling_falcon_h1 as hf

# Keys of every config.json unless a variant overrides them (None in an override: the key is left out).
BASE = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16,
    mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16, mamba_conv_bias=True, mamba_proj_bias=False,
    mamba_rms_norm=True, mamba_norm_before_gate=False, rms_norm_eps=1e-5, hidden_act="silu",
    max_position_embeddings=1024, rope_theta=1e11, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
MUP_05B = dict(
    embedding_multiplier=5.656854249492381, lm_head_multiplier=0.0390625,
    key_multiplier=0.39062499999999994, attention_in_multiplier=1.0, attention_out_multiplier=0.9375,
    ssm_in_multiplier=1.25, ssm_out_multiplier=0.23570226039551587,
    mlp_multipliers=[0.8838834764831844, 0.5859375],
    ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
)

# The seeds. name: seed, config overrides, batch B, prompt length L, decode steps S,
# layers whose hidden states are stored (None: all), description (also in the file's metadata).
VARIANTS = {
    "tiny": dict(
        seed=1234, config={}, batch=2, length=37, steps=8, layers=None,
        description="bundled default model: mamba_rms_norm on, gate then norm (as the releases), G 1, "
                    "Hq/Hkv 4/2, head_dim 32 != hidden/heads 16, mamba_d_head given, top-level rope_theta, "
                    "prompt 37 not a multiple of chunk 16"),
    "g2_nbg": dict(
        seed=2345,
        config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=6,
                    num_key_value_heads=2, head_dim=16, mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head="auto",
                    mamba_n_groups=2, mamba_chunk_size=8, mamba_norm_before_gate=None, rope_theta=None,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e11}),
        batch=2, length=20, steps=5, layers=[0, 2],
        description="G 2 (heads 0-3 read group 0), Hq/Hkv 6/2, mamba_norm_before_gate absent (HF default "
                    "True: norm then gate), mamba_d_head \"auto\" (= 8), rope_parameters.rope_theta, "
                    "3 layers with hidden states of layers 0 and 2 only"),
    "mup_05b": dict(
        seed=3456,
        config=dict(intermediate_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                    mamba_d_ssm=96, mamba_n_heads=6, mamba_d_head=16, mamba_rms_norm=False, **MUP_05B),
        batch=2, length=33, steps=6, layers=None,
        description="the 0.5B multipliers, mamba_rms_norm false (no mamba.norm.weight), Hq/Hkv 4/1, "
                    "Ds 96 = 1.5 hidden (as the 0.5B), prompt 33 not a multiple of chunk 16"),
    "len1": dict(
        seed=4567,
        config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=1,
                    head_dim=None, mamba_d_ssm=None, mamba_n_heads=4, mamba_d_head=16, mamba_chunk_size=4,
                    mamba_norm_before_gate=True),
        batch=1, length=1, steps=6, layers=None,
        description="a one-token prompt (batch 1), mamba_rms_norm on, norm then gate (explicit), G 1, "
                    "chunk 4; head_dim absent (= hidden/heads = 8), mamba_d_ssm null (= mamba_expand * "
                    "hidden = 64)"),
}

OP_SEEDS = {"ssd": 11, "ssd_clamp": 12, "conv": 13}

TOKENIZER_TEXT = "Hello, Falcon!"


def make_config(overrides):
    cfg = dict(BASE)
    cfg.update(overrides)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    # JSON null, not absence, for mamba_d_ssm: HF's default for an absent key is 1024, while null means
    # mamba_expand * hidden_size.
    if "mamba_d_ssm" in overrides and overrides["mamba_d_ssm"] is None:
        cfg["mamba_d_ssm"] = None
    cfg["model_type"] = "falcon_h1"
    cfg["architectures"] = ["FalconH1ForCausalLM"]
    return cfg


def save_st(tensors, path, metadata):
    """safetensors with the metadata keys sorted: safetensors writes them in hash order, which would
    make every rerun differ byte-wise though nothing changed."""
    raw = st_save(tensors, metadata=metadata)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n, path
    with open(path, "wb") as f:
        f.write(raw[:8] + text + raw[8 + n:])
    back = load_file(path)
    assert all(torch.equal(back[k], v) for k, v in tensors.items()), path


@torch.no_grad()
def randomize(model, gen):
    """Weights large enough that logits are far from uniform, in realistic ranges."""
    def randn(shape):
        return torch.randn(shape, generator=gen)

    for name, p in model.named_parameters():
        if name.endswith("A_log"):
            p.copy_(torch.empty(p.shape).uniform_(math.log(1.0), math.log(8.0), generator=gen))
        elif name.endswith("dt_bias"):
            dt = torch.empty(p.shape).uniform_(0.01, 0.2, generator=gen)
            p.copy_(torch.log(torch.expm1(dt)))
        elif name.endswith(".D"):
            p.copy_(1.0 + 0.3 * randn(p.shape))
        elif "conv1d.weight" in name:
            p.copy_(torch.empty(p.shape).uniform_(-0.5, 0.5, generator=gen))
        elif "conv1d.bias" in name:
            p.copy_(0.1 * randn(p.shape))
        elif p.dim() == 1:  # every norm weight
            p.copy_(1.0 + 0.1 * randn(p.shape))
        elif "embed_tokens" in name:
            p.copy_(randn(p.shape))
        elif name == "lm_head.weight":
            # Logits with a spread of about 4 after the lm_head multiplier: far from uniform.
            p.copy_(randn(p.shape) * (4.0 / (math.sqrt(p.shape[1]) * model.config.lm_head_multiplier)))
        else:  # Linear [out, in]
            # Outputs scaled by a small muP multiplier are drawn larger, so that every branch still
            # matters and each multiplier visibly moves the logits (1 for non-muP variants).
            p.copy_(randn(p.shape) * (1.5 / math.sqrt(p.shape[1]) / out_multiplier(model.config, name)))


def out_multiplier(config, name):
    """The scalar multiplier applied to this Linear's output in the layer (1 for most)."""
    if name.endswith("mamba.out_proj.weight"):
        return config.ssm_out_multiplier
    if name.endswith("self_attn.o_proj.weight"):
        return config.attention_out_multiplier
    if name.endswith("feed_forward.down_proj.weight"):
        return config.mlp_multipliers[1]
    return 1.0


def check_config_read_back(name, cfg_dict, config, model):
    """HF must build exactly the model the config.json means (absent keys included)."""
    d = config.hidden_size
    heads = config.num_attention_heads
    hd = cfg_dict.get("head_dim", d // heads)
    ds = cfg_dict["mamba_d_ssm"] if cfg_dict.get("mamba_d_ssm") is not None else int(config.mamba_expand * d)
    p = ds // config.mamba_n_heads
    nbg = cfg_dict.get("mamba_norm_before_gate", True)
    theta = cfg_dict.get("rope_theta", cfg_dict.get("rope_parameters", {}).get("rope_theta"))
    layer = model.model.layers[0]
    assert layer.self_attn.head_dim == hd, (name, layer.self_attn.head_dim, hd)
    assert layer.self_attn.q_proj.weight.shape == (heads * hd, d)
    assert layer.mamba.intermediate_size == ds and layer.mamba.head_dim == p, (name, ds, p)
    assert config.rope_parameters["rope_theta"] == theta, (name, config.rope_parameters)
    inv = model.model.rotary_emb.inv_freq
    assert inv.shape == (hd // 2,) and abs(float(inv[1]) - theta ** (-2 / hd)) < 1e-6 * theta ** (-2 / hd)
    assert tuple(config.time_step_limit) == (0.0, math.inf), (name, config.time_step_limit)
    if cfg_dict["mamba_rms_norm"]:
        assert layer.mamba.norm.norm_before_gate == nbg and layer.mamba.norm.n_groups == config.mamba_n_groups
    else:
        assert isinstance(layer.mamba.norm, torch.nn.Identity)
    assert not config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def traps(cfg_dict, length):
    """Config edits that mimic known implementation bugs (spec, "Known traps"); each must move this
    variant's prompt logits by far more than the 1e-4 the Rust parity test allows."""
    t = {}
    if cfg_dict["mamba_rms_norm"]:
        t["norm/gate order flipped"] = {"mamba_norm_before_gate": not cfg_dict.get("mamba_norm_before_gate", True)}
    theta = cfg_dict.get("rope_theta", cfg_dict.get("rope_parameters", {}).get("rope_theta"))
    if length > 1:  # one token at position 0 is not rotated
        assert theta != 1e4
        t["rope_theta 1e4"] = {"rope_theta": 1e4, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}
    for k in ("embedding_multiplier", "lm_head_multiplier", "key_multiplier", "attention_in_multiplier",
              "attention_out_multiplier", "ssm_in_multiplier", "ssm_out_multiplier"):
        if cfg_dict.get(k, 1.0) != 1.0:
            t[f"{k} dropped"] = {k: 1.0}
    if cfg_dict.get("key_multiplier", 1.0) != 1.0:
        t["key_multiplier twice"] = {"key_multiplier": cfg_dict["key_multiplier"] ** 2}
    for k, n in (("mlp_multipliers", 2), ("ssm_multipliers", 5)):
        for i, m in enumerate(cfg_dict.get(k, [1.0] * n)):
            if m != 1.0:
                t[f"{k}[{i}] dropped"] = {k: [1.0 if j == i else x for j, x in enumerate(cfg_dict[k])]}
    return t


@torch.no_grad()
def check_discriminates(name, cfg_dict, state, ids, logits):
    def run(edit, groups_repeat=False, norm_groups=None):
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump({**cfg_dict, **edit}, f)
            config = FalconH1Config.from_pretrained(tmp)
        config._attn_implementation = "eager"
        model = FalconH1ForCausalLM(config).float().eval()
        model.load_state_dict(state, strict=False)
        if norm_groups is not None:
            for layer in model.model.layers:
                layer.mamba.norm.n_groups = norm_groups
        real = hf.mamba2_chunk_scan
        if groups_repeat:  # B/C groups with `repeat` instead of `repeat_interleave`
            def wrong(x, dt, A, B, C, chunk_size, **kw):
                idx = torch.arange(x.shape[2]) % B.shape[2]
                return real(x, dt, A, B[:, :, idx], C[:, :, idx], chunk_size, **kw)
            hf.mamba2_chunk_scan = wrong
        try:
            return model(ids, use_cache=False).logits
        finally:
            hf.mamba2_chunk_scan = real

    assert rel(run({}), logits) == 0.0, f"{name}: rebuilt model differs"
    cases = {k: dict(edit=e) for k, e in traps(cfg_dict, ids.shape[1]).items()}
    if cfg_dict["mamba_n_groups"] > 1:
        cases["B/C groups by repeat"] = dict(edit={}, groups_repeat=True)
        if cfg_dict["mamba_rms_norm"]:
            cases["gated norm over all of Ds"] = dict(edit={}, norm_groups=1)
    moved = {}
    for k, c in cases.items():
        moved[k] = rel(run(c.pop("edit"), **c), logits)
        assert moved[k] > 1e-3, f"{name}: trap '{k}' moves the logits by only {moved[k]:.1e}"
    return min(moved.items(), key=lambda kv: kv[1])


def capture_layers(model):
    outs = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(_m, _inp, out, i=i):
            outs[i] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        hooks.append(layer.register_forward_hook(hook))
    return outs, hooks


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def make_variant(out_dir, name, v):
    seed, batch, length, steps = v["seed"], v["batch"], v["length"], v["steps"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg_dict = make_config(v["config"])
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
        f.write("\n")
    config = FalconH1Config.from_pretrained(d)  # HF reads exactly what we wrote
    config._attn_implementation = "eager"
    model = FalconH1ForCausalLM(config).float().eval()
    check_config_read_back(name, cfg_dict, config, model)
    randomize(model, gen)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "mup_vector" not in k}
    save_st(state, os.path.join(d, "model.safetensors"), {"format": "pt"})

    ids = torch.randint(3, config.vocab_size, (batch, length), generator=gen)
    outs, hooks = capture_layers(model)
    logits = model(ids, use_cache=False).logits.float()
    for h in hooks:
        h.remove()
    assert logits.shape == (batch, length, config.vocab_size) and torch.isfinite(logits).all()
    if batch > 1:  # the batched prompt forward is right for L > 1; check it anyway
        for b in range(batch):
            e = rel(model(ids[b:b + 1], use_cache=False).logits[0], logits[b])
            assert e < 1e-5, f"{name}: batched vs single prompt {b}: {e:.3e}"
    tensors = {"input_ids": ids.to(torch.int64).contiguous(), "logits": logits.contiguous()}
    layers = v["layers"] if v["layers"] is not None else list(range(config.num_hidden_layers))
    for i in layers:
        tensors[f"hidden_states.{i}"] = outs[i].float().contiguous()

    dec_ids, dec_logits = [], []
    for b in range(batch):
        # eos_token_id=None really turns EOS off in 5.17 (no stop, no suppression); min_new_tokens is belt
        # and braces. output_logits are the raw logits, before any processor.
        g = model.generate(ids[b:b + 1], max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                           output_logits=True, return_dict_in_generate=True, use_cache=True,
                           eos_token_id=None, pad_token_id=0)
        new = g.sequences[0, length:]
        assert new.shape == (steps,), (name, new.shape)
        lg = torch.stack([x[0] for x in g.logits]).float()
        # Greedy recomputation without a cache gives the same tokens and logits.
        seq = ids[b:b + 1]
        for s in range(steps):
            full = model(seq, use_cache=False).logits[0, -1].float()
            e = rel(lg[s], full)
            assert e < 1e-4, f"{name}: cached vs recomputed step {s}: {e:.3e}"
            assert int(full.argmax()) == int(new[s]) == int(lg[s].argmax()), f"{name}: token differs at step {s}"
            seq = torch.cat([seq, new[s].view(1, 1)], dim=1)
        dec_ids.append(new)
        dec_logits.append(lg)
    tensors["decode_ids"] = torch.stack(dec_ids).to(torch.int64).contiguous()
    tensors["decode_logits"] = torch.stack(dec_logits).contiguous()
    assert torch.allclose(tensors["decode_logits"][:, 0], logits[:, -1], rtol=1e-4, atol=1e-4)

    probs = torch.softmax(logits[:, -1].double(), -1)
    entropy = float(-(probs * probs.clamp_min(1e-300).log()).sum(-1).mean())
    uniform = math.log(config.vocab_size)
    assert entropy < 0.7 * uniform, f"{name}: logits too uniform ({entropy:.2f} vs {uniform:.2f})"
    weakest = check_discriminates(name, cfg_dict, state, ids, logits)
    meta = {
        "seed": str(seed), "variant": name, "description": v["description"],
        "config_overrides": json.dumps(v["config"], sort_keys=True),
        "batch": str(batch), "prompt_len": str(length), "decode_steps": str(steps),
        "hidden_state_layers": json.dumps(layers),
        "decode": "HF generate, greedy, use_cache=True, one sequence at a time (batch 1); checked against "
                  "no-cache recomputation",
        "transformers": transformers.__version__, "torch": torch.__version__,
    }
    save_st(tensors, os.path.join(d, "reference.safetensors"), meta)
    print(f"{name}: B={batch} L={length} S={steps} d={config.hidden_size} layers={config.num_hidden_layers} "
          f"(stored {layers}) V={config.vocab_size}; last-logit entropy {entropy:.2f} (uniform {uniform:.2f}), "
          f"max prob {float(probs.max()):.2f}, |logits| max {float(logits.abs().max()):.1f}; "
          f"weakest trap '{weakest[0]}' moves logits {weakest[1]:.1e}; "
          f"decode {tensors['decode_ids'].tolist()}")


def make_tokenizer(path):
    """A byte-level BPE with no merges: 256 tokens, token id = byte value."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    byte_of = _bytes_to_unicode_inverse()
    byte_chars = sorted(ByteLevel.alphabet(), key=lambda c: byte_of[c])
    assert len(byte_chars) == 256
    vocab = {c: i for i, c in enumerate(byte_chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    for text in (TOKENIZER_TEXT, " two  spaces\nand é ü 🙂"):
        enc = tok.encode(text)
        assert enc.ids == list(text.encode()), enc.ids
        assert tok.decode(enc.ids) == text, tok.decode(enc.ids)
    tok.save(path)
    print(f"tiny/tokenizer.json: {TOKENIZER_TEXT!r} -> {tok.encode(TOKENIZER_TEXT).ids}")


def _bytes_to_unicode_inverse():
    # GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(map(chr, cs), bs))


def ssd_sequential(x, dt, dt_bias, a_log, B, C, D, init, dt_limit):
    """The recurrence one token at a time in f64 (batch 1, no batch dim): an independent check of HF."""
    T, H, P = x.shape
    G = B.shape[1]
    dt = torch.nn.functional.softplus(dt.double() + dt_bias.double()).clamp(dt_limit[0], dt_limit[1])
    A = -torch.exp(a_log.double())
    S = init.double().clone()
    ys = []
    for t in range(T):
        g = torch.arange(H) // (H // G)  # repeat_interleave: head h reads group h / (H/G)
        Bt, Ct = B[t].double()[g], C[t].double()[g]  # [H, N]
        S = torch.exp(dt[t] * A)[:, None, None] * S + dt[t][:, None, None] * x[t].double()[:, :, None] * Bt[:, None, :]
        ys.append(torch.einsum("hpn,hn->hp", S, Ct) + D.double()[:, None] * x[t].double())
    return torch.stack(ys), S


@torch.no_grad()
def make_op_goldens(out_dir):
    # HF's wrappers call the optimised package when it is importable; these goldens are of the torch code.
    for pkg in ("mamba_ssm", "causal_conv1d"):
        assert importlib.util.find_spec(pkg) is None, f"{pkg} is installed: HF would not run its torch path"
    d = os.path.join(out_dir, "ops")
    os.makedirs(d, exist_ok=True)

    def ssd(file, seed, T, H, P, N, G, chunk, dt_limit, with_init):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, T, H, P, generator=g)
        dt = torch.randn(1, T, H, generator=g) - 4.0
        dt_bias = 0.5 * torch.randn(H, generator=g)
        a_log = torch.empty(H).uniform_(-1.0, 2.0, generator=g)
        B = torch.randn(1, T, G, N, generator=g)
        C = torch.randn(1, T, G, N, generator=g)
        D = 1.0 + 0.3 * torch.randn(H, generator=g)
        init = torch.randn(1, H, P, N, generator=g) if with_init else torch.zeros(1, H, P, N)
        y, fin = hf.mamba2_chunk_scan(x, dt, -torch.exp(a_log), B, C, chunk_size=chunk, D=D, dt_bias=dt_bias,
                                      initial_states=init if with_init else None, dt_softplus=True,
                                      dt_limit=dt_limit, return_final_states=True)
        y_ref, fin_ref = ssd_sequential(x[0], dt[0], dt_bias, a_log, B[0], C[0], D, init[0], dt_limit)
        ey, ef = rel(y[0], y_ref), rel(fin[0], fin_ref)
        assert ey < 1e-5 and ef < 1e-5, f"{file}: HF chunk scan vs sequential: y {ey:.2e}, state {ef:.2e}"
        soft = torch.nn.functional.softplus(dt + dt_bias)
        clamped = float((soft > dt_limit[1]).float().mean())
        save_st({
            "x": x[0].contiguous(), "dt": dt[0].contiguous(), "dt_bias": dt_bias, "A_log": a_log,
            "B": B[0].contiguous(), "C": C[0].contiguous(), "D": D, "initial_state": init[0].contiguous(),
            "y": y[0].float().contiguous(), "final_state": fin[0].float().contiguous(),
            "chunk_size": torch.tensor([chunk], dtype=torch.int64),
            "dt_limit": torch.tensor(list(dt_limit), dtype=torch.float32),
        }, os.path.join(d, file), {
            "seed": str(seed),
            "initial_state": "given" if with_init else "zeros: none was passed to HF (initial_states=None)",
            "dims": json.dumps(dict(T=T, H=H, P=P, N=N, G=G, chunk=chunk)),
            "dt_limit": json.dumps(list(dt_limit)),
            "source": "transformers.models.falcon_h1.modeling_falcon_h1.mamba2_chunk_scan (torch path), "
                      "dt_softplus=True, return_final_states=True",
            "transformers": transformers.__version__, "torch": torch.__version__,
        })
        print(f"ops/{file}: T={T} H={H} P={P} N={N} G={G} chunk={chunk} dt_limit={dt_limit} "
              f"({clamped:.0%} of dt clamped); vs sequential f64: y {ey:.1e}, state {ef:.1e}")

    ssd("ssd.safetensors", OP_SEEDS["ssd"], 45, 4, 8, 16, 2, 16, (0.0, math.inf), True)
    ssd("ssd_clamp.safetensors", OP_SEEDS["ssd_clamp"], 20, 4, 8, 16, 1, 8, (0.0, 0.05), False)

    seed = OP_SEEDS["conv"]
    g = torch.Generator().manual_seed(seed)
    T, Cn, K = 13, 24, 4
    x = torch.randn(1, Cn, T, generator=g)
    w = torch.empty(Cn, K).uniform_(-0.5, 0.5, generator=g)
    b = 0.1 * torch.randn(Cn, generator=g)
    out = hf.causal_conv1d_fn(x, w, b, activation="silu")
    state = x[:, :, -K:].clone()  # HF's conv state: the last K inputs (the update uses the last K-1 of them)
    x_next = torch.randn(1, Cn, 1, generator=g)
    out_next = hf.causal_conv1d_update(x_next, state, w, b, activation="silu")
    # Independent check: out_t[c] = silu(bias[c] + sum_k w[c,k] x_{t-K+1+k}[c]), zeros before t = 0.
    xs = torch.cat([torch.zeros(Cn, K - 1), x[0], x_next[0]], dim=1).double()
    ref = torch.stack([xs[:, t:t + K].mul(w.double()).sum(1) + b.double() for t in range(T + 1)], dim=1)
    ref = torch.nn.functional.silu(ref)
    assert rel(out[0], ref[:, :T]) < 1e-6 and rel(out_next[0], ref[:, T:]) < 1e-6, "conv vs plain reference"
    save_st({
        "x": x[0].T.contiguous(), "weight": w, "bias": b, "out": out[0].T.contiguous(),
        "x_next": x_next[:, :, 0].contiguous(), "out_next": out_next[:, :, 0].contiguous(),
        "width": torch.tensor([K], dtype=torch.int64),
    }, os.path.join(d, "conv.safetensors"), {
        "seed": str(seed), "activation": "silu",
        "source": "transformers.models.falcon_h1.modeling_falcon_h1.causal_conv1d_fn / causal_conv1d_update "
                  "(torch path)",
        "transformers": transformers.__version__, "torch": torch.__version__,
    })
    print(f"ops/conv.safetensors: T={T} C={Cn} K={K}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "data"))
    args = ap.parse_args()
    assert transformers.__version__ == "5.17.0", f"transformers {transformers.__version__}, pinned 5.17.0"
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for name, v in VARIANTS.items():
        make_variant(args.out, name, v)
    make_tokenizer(os.path.join(args.out, "tiny", "tokenizer.json"))
    make_op_goldens(args.out)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(args.out) for f in fs)
    print(f"{args.out}: {total / 1e6:.2f} MB in all")


if __name__ == "__main__":
    main()
