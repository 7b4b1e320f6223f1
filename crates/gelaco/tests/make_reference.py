#!/usr/bin/env python3
"""Make the Hugging Face transformers reference fixture for the demo model.

Run once (it needs torch, transformers and gguf, which the Rust tests do not):

    python3 crates/gelaco/tests/make_reference.py MODEL.gguf ../shared/data/wikitext2-raw-test.txt \
        > crates/gelaco/tests/fixtures/smollm2_reference.json

transformers dequantises the GGUF to float32 and runs the model with eager attention.
Its GGUF tokenizer conversion ignores `tokenizer.ggml.pre` (for the demo model, "smollm":
digits split one by one before byte-level BPE), so the script installs llama.cpp's rule
on the converted tokenizer before tokenising WikiText-2.
"""
import json
import math
import os
import sys

import torch
from tokenizers import Regex, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "The capital of France is"
WINDOW = 512
WINDOWS = 6
TAP_LAYERS = (0, 14, 29)
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main():
    model_path, text_path = sys.argv[1], sys.argv[2]
    folder, name = os.path.split(os.path.abspath(model_path))
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    ).eval()

    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])

    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    taps = {}
    hooks = []
    for layer in TAP_LAYERS:
        block = model.model.layers[layer]
        for mod_name in MODULES:
            parent = block.self_attn if mod_name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else block.mlp
            module = getattr(parent, mod_name)

            def hook(_m, _inp, out, key=f"{layer}.{mod_name}"):
                taps[key] = out[0].detach()

            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    for h in hooks:
        h.remove()
    logits = out.logits[0, -1].double()
    top = torch.topk(logits, 10)
    probe_ids = list(range(0, logits.shape[0], 997))
    final_hidden = out.hidden_states[-1][0]  # after the final norm
    tap_stats = {
        k: {"sum": float(v.double().sum()), "norm": float(v.double().norm()), "first": [float(x) for x in v[-1, :4]]}
        for k, v in sorted(taps.items())
    }

    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    all_ids = backend.encode(text, add_special_tokens=False).ids
    nll, scored = 0.0, 0
    with torch.no_grad():
        for w in range(WINDOWS):
            chunk = torch.tensor([all_ids[w * WINDOW:(w + 1) * WINDOW]])
            lp = torch.log_softmax(model(chunk).logits[0].double(), dim=-1)
            tgt = chunk[0, 1:]
            nll -= float(lp[:-1].gather(1, tgt[:, None]).sum())
            scored += tgt.shape[0]

    json.dump({
        "model": name,
        "prompt": PROMPT,
        "prompt_ids": ids,
        "top10": [{"id": int(i), "logit": float(v)} for v, i in zip(top.values, top.indices)],
        "probe_logits": {str(i): float(logits[i]) for i in probe_ids},
        "final_hidden_last": {"sum": float(final_hidden[-1].double().sum()), "norm": float(final_hidden[-1].double().norm())},
        "taps_last_sample": tap_stats,
        "wikitext2_test_tokens": len(all_ids),
        "perplexity": {"window": WINDOW, "windows": WINDOWS, "tokens_scored": scored, "perplexity": math.exp(nll / scored)},
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
    }, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
