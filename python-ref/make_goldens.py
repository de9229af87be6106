"""Golden outputs of HF transformers' FalconH1ForCausalLM for the Rust tests.

Builds small random Falcon-H1 models in float32 on the CPU, saves each as
tests/data/<name>/{config.json, model.safetensors, reference.safetensors}, and op-level goldens of
HF's own torch SSD and conv functions in tests/data/ops/. Deterministic: every variant has its own
seed (VARIANTS below), recorded in the metadata of each reference file.

    python python-ref/make_goldens.py [--out tests/data]

reference.safetensors (f32 unless said):
  input_ids        I64 [B, L]   the prompts
  logits           [B, L, V]    one forward over the prompts (use_cache=False)
  hidden_states.i  [B, L, d]    output of decoder layer i (forward hooks); a file may hold only some layers
  decode_ids       I64 [B, S]   greedy continuation of S steps (generate, one sequence at a time:
                                HF 5.17 is wrong for batched one-token steps with mamba_rms_norm)
  decode_logits    [B, S, V]    the logits that chose decode_ids[:, s]; decode_logits[:, 0] == logits[:, -1]
"""

import argparse
import json
import math
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import FalconH1Config, FalconH1ForCausalLM
from transformers.models.falcon_h1 import modeling_falcon_h1 as hf

# name: (seed, config overrides, batch, prompt length, decode steps, layers whose hidden states are kept)
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
VARIANTS = {
    # The bundled default model: the releases' settings (rms norm on, gate before norm), head_dim != d/Hq.
    "tiny": (1234, {}, 2, 37, 8, None),
    # G = 2, Hq/Hkv = 3, mamba_norm_before_gate absent (HF default True), mamba_d_head "auto",
    # rope_parameters instead of rope_theta, 3 layers with only layers 0 and 2 stored.
    "g2_nbg": (2345, dict(num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                          mamba_n_groups=2, mamba_d_head="auto", mamba_chunk_size=8,
                          mamba_norm_before_gate=None, rope_theta=None,
                          rope_parameters={"rope_type": "default", "rope_theta": 1e11}),
               2, 20, 5, [0, 2]),
    # The 0.5B multipliers and its mamba_rms_norm false; Hq/Hkv = 4.
    "mup_05b": (3456, dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16, mamba_rms_norm=False,
                           **MUP_05B), 2, 33, 6, None),
    # A one-token prompt; decode crosses chunk boundaries (chunk 4); norm before gate explicitly.
    "len1": (4567, dict(mamba_chunk_size=4, mamba_norm_before_gate=True), 1, 1, 6, None),
}


def make_config(overrides):
    cfg = dict(BASE)
    cfg.update(overrides)
    cfg = {k: v for k, v in cfg.items() if v is not None}  # None: leave the key out entirely
    cfg["model_type"] = "falcon_h1"
    cfg["architectures"] = ["FalconH1ForCausalLM"]
    return cfg


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
            p.copy_(randn(p.shape) * (1.5 / math.sqrt(p.shape[1])))


def capture_layers(model):
    outs = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(_m, _inp, out, i=i):
            outs[i] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        hooks.append(layer.register_forward_hook(hook))
    return outs, hooks


@torch.no_grad()
def make_variant(out_dir, name, seed, overrides, batch, length, steps, keep_layers):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg_dict = make_config(overrides)
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
        f.write("\n")
    config = FalconH1Config.from_pretrained(d)  # HF reads exactly what we wrote
    config._attn_implementation = "eager"
    model = FalconH1ForCausalLM(config).float().eval()
    randomize(model, gen)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "mup_vector" not in k}
    save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})

    ids = torch.randint(3, config.vocab_size, (batch, length), generator=gen)
    outs, hooks = capture_layers(model)
    logits = model(ids, use_cache=False).logits.float()
    for h in hooks:
        h.remove()
    tensors = {"input_ids": ids.to(torch.int64).contiguous(), "logits": logits.contiguous()}
    layers = keep_layers if keep_layers is not None else range(config.num_hidden_layers)
    for i in layers:
        tensors[f"hidden_states.{i}"] = outs[i].float().contiguous()

    dec_ids, dec_logits = [], []
    for b in range(batch):
        g = model.generate(ids[b:b + 1], max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                           output_logits=True, return_dict_in_generate=True, use_cache=True,
                           eos_token_id=None, pad_token_id=0)
        new = g.sequences[0, length:]
        lg = torch.stack([x[0] for x in g.logits]).float()
        # Cross-check: greedy recomputation without a cache gives the same tokens and logits.
        seq = ids[b:b + 1]
        for s in range(steps):
            full = model(seq, use_cache=False).logits[0, -1].float()
            err = (full - lg[s]).norm() / full.norm()
            assert err < 1e-4, f"{name}: cached vs recomputed step {s}: {err:.3e}"
            assert int(full.argmax()) == int(new[s]), f"{name}: token differs at step {s}"
            seq = torch.cat([seq, new[s].view(1, 1)], dim=1)
        dec_ids.append(new)
        dec_logits.append(lg)
    tensors["decode_ids"] = torch.stack(dec_ids).to(torch.int64).contiguous()
    tensors["decode_logits"] = torch.stack(dec_logits).contiguous()
    assert torch.allclose(tensors["decode_logits"][:, 0], logits[:, -1], rtol=1e-4, atol=1e-4)

    probs = torch.softmax(logits[:, -1], -1)
    entropy = float(-(probs * probs.clamp_min(1e-30).log()).sum(-1).mean())
    assert entropy < 0.7 * math.log(config.vocab_size), f"{name}: logits too uniform ({entropy:.2f})"
    meta = {"seed": str(seed), "variant": name, "transformers": transformers.__version__,
            "torch": torch.__version__, "description": json.dumps(overrides)}
    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata=meta)
    print(f"{name}: B={batch} L={length} S={steps} entropy {entropy:.2f} (uniform {math.log(config.vocab_size):.2f}) "
          f"max prob {float(probs.max()):.2f}; decode {tensors['decode_ids'].tolist()}")
    return config


def make_tokenizer(path):
    """A byte-level BPE with no merges: 256 tokens, one per byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    byte_chars = sorted(alphabet, key=lambda c: _byte_of(c))
    vocab = {c: i for i, c in enumerate(byte_chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    text = "Hello, Falcon!"
    enc = tok.encode(text)
    assert tok.decode(enc.ids) == text, tok.decode(enc.ids)
    assert enc.ids == list(text.encode()), enc.ids
    tok.save(path)


def _byte_of(ch):
    # GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(map(chr, cs), bs))[ch]


@torch.no_grad()
def make_op_goldens(out_dir):
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
        save_file({
            "x": x[0].contiguous(), "dt": dt[0].contiguous(), "dt_bias": dt_bias, "A_log": a_log,
            "B": B[0].contiguous(), "C": C[0].contiguous(), "D": D, "initial_state": init[0].contiguous(),
            "y": y[0].float().contiguous(), "final_state": fin[0].float().contiguous(),
            "chunk_size": torch.tensor([chunk], dtype=torch.int64),
            "dt_limit": torch.tensor(list(dt_limit), dtype=torch.float32),
        }, os.path.join(d, file), metadata={"seed": str(seed), "initial_state": "given" if with_init else "zeros (none passed)",
                                            "source": "transformers.models.falcon_h1.modeling_falcon_h1.mamba2_chunk_scan"})
        print(f"ops/{file}: T={T} H={H} P={P} N={N} G={G} chunk={chunk} dt_limit={dt_limit}")

    ssd("ssd.safetensors", 11, 45, 4, 8, 16, 2, 16, (0.0, float("inf")), True)
    ssd("ssd_clamp.safetensors", 12, 20, 4, 8, 16, 1, 8, (0.0, 0.05), False)

    g = torch.Generator().manual_seed(13)
    T, Cn, K = 13, 24, 4
    x = torch.randn(1, Cn, T, generator=g)
    w = torch.empty(Cn, K).uniform_(-0.5, 0.5, generator=g)
    b = 0.1 * torch.randn(Cn, generator=g)
    out = hf.causal_conv1d_fn(x, w, b, activation="silu")
    state = x[:, :, -K:].clone()
    x_next = torch.randn(1, Cn, 1, generator=g)
    out_next = hf.causal_conv1d_update(x_next, state, w, b, activation="silu")
    save_file({
        "x": x[0].T.contiguous(), "weight": w, "bias": b, "out": out[0].T.contiguous(),
        "x_next": x_next[:, :, 0].contiguous(), "out_next": out_next[:, :, 0].contiguous(),
        "width": torch.tensor([K], dtype=torch.int64),
    }, os.path.join(d, "conv.safetensors"), metadata={"seed": "13", "activation": "silu"})
    print(f"ops/conv.safetensors: T={T} C={Cn} K={K}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "data"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for name, (seed, overrides, batch, length, steps, keep) in VARIANTS.items():
        make_variant(args.out, name, seed, overrides, batch, length, steps, keep)
    make_tokenizer(os.path.join(args.out, "tiny", "tokenizer.json"))
    make_op_goldens(args.out)


if __name__ == "__main__":
    main()
