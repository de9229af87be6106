"""What HF transformers' own bf16 forward gets against our f32 goldens: the bar a bf16 implementation
can be held to on these tiny models (their small widths leave bf16 rounding little to average over).

    python python-ref/bf16_baseline.py [--data tests/data] [--device cuda] [--write]

For each model folder: the model in bfloat16 (weights rounded once, as ours are), eager attention, the
prompt forward (use_cache=False), and, teacher-forced, the prompt followed by the golden decode tokens
(so decode step s is compared on the same inputs as the golden). Prints per-layer, prompt-logit and
per-step relative L2 errors against reference.safetensors, the greedy token at each step, and the
golden's top-2 logit margin there (a margin below the bf16 error is a near tie that bf16 may flip).
"""

import argparse
import json
import os

import torch
import transformers
from safetensors.torch import load_file
from transformers import FalconH1Config, FalconH1ForCausalLM


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def baseline(d, device):
    config = FalconH1Config.from_pretrained(d)
    config._attn_implementation = "eager"
    model = FalconH1ForCausalLM(config).eval()
    state = load_file(os.path.join(d, "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("mup_vector" in k for k in missing), (missing, unexpected)
    model = model.to(device=device, dtype=torch.bfloat16)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    ids = ref["input_ids"].to(device)
    B, L = ids.shape
    outs = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, o, i=i: outs.__setitem__(i, o[0] if isinstance(o, tuple) else o))
             for i, layer in enumerate(model.model.layers)]
    worst = 0.0
    print(f"== {os.path.basename(os.path.normpath(d))}: HF {torch.__version__} bf16 on {device}")
    print(f"{'compared':<28}{'rel L2 err':>12}")
    for b in range(B):  # one sequence at a time, as the goldens were made
        logits = model(ids[b:b + 1], use_cache=False).logits[0].float().cpu()
        for k in sorted(ref):
            if k.startswith("hidden_states."):
                i = int(k.split(".")[1])
                e = rel(outs[i][0].float().cpu(), ref[k][b])
                print(f"seq {b} layer {i:<19}{e:>12.3e}")
                worst = max(worst, e)
        e = rel(logits, ref["logits"][b])
        worst = max(worst, e)
        print(f"seq {b} prompt logits{'':<9}{e:>12.3e}")
        dec = ref["decode_ids"][b].to(device)
        full = torch.cat([ids[b], dec[:-1]]).view(1, -1)
        lg = model(full, use_cache=False).logits[0, L - 1:].float().cpu()
        for s in range(dec.numel()):
            g = ref["decode_logits"][b, s]
            top = torch.topk(g, 2).values
            e = rel(lg[s], g)
            worst = max(worst, e)
            ok = int(lg[s].argmax()) == int(ref["decode_ids"][b, s])
            print(f"seq {b} step {s} logits{'':<11}{e:>12.3e}  token {'same' if ok else 'DIFFERS'}"
                  f" (golden margin {float(top[0] - top[1]):.3f}, max abs err {float((lg[s] - g).abs().max()):.3f})")
    for h in hooks:
        h.remove()
    print(f"worst {worst:.3e}")
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="tests/data")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--write", action="store_true", help="write <folder>/hf_bf16.json")
    a = ap.parse_args()
    for name in sorted(os.listdir(a.data)):
        d = os.path.join(a.data, name)
        if os.path.exists(os.path.join(d, "reference.safetensors")):
            worst = baseline(d, a.device)
            if a.write:
                dev = torch.cuda.get_device_name() if a.device == "cuda" else "CPU"
                info = {
                    "worst_rel_err": float(f"{worst:.4g}"),
                    "what": "largest relative L2 error against reference.safetensors of HF transformers' own "
                            "bf16 forward (layers, prompt logits, teacher-forced decode logits)",
                    "measured": f"{dev}, torch {torch.__version__}, transformers {transformers.__version__}, "
                                "eager attention",
                    "script": "python-ref/bf16_baseline.py --write",
                }
                with open(os.path.join(d, "hf_bf16.json"), "w") as f:
                    json.dump(info, f, indent=2)
                    f.write("\n")


if __name__ == "__main__":
    main()
