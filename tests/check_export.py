#!/usr/bin/env python3
"""Check exports of a compressed demo model with independent Python tools.

Needs torch, transformers and gguf (the Rust tests do not). Usage:

    python3 tests/check_export.py SOURCE.gguf HF_EXPORT_DIR GGUF_EXPORT MERGES

MERGES is the keep-first merge list the exports were made with ("B:E,..."; keep-first
collapses B..E into B, so the compressed model is the source without layers B+1..E).

1. transformers loads the Hugging Face export; its logits on a fixed text are compared
   with transformers' own compressed model: the source GGUF dequantised by transformers,
   with the merged-away layers deleted from its layer list.
2. The `gguf` package reads the GGUF export: block count, per-layer arrays, tensor count,
   and every tensor of a kept layer byte-identical to the source's.

Prints one JSON object with the figures and exits non-zero when a check fails.
"""
import json
import os
import sys

import numpy as np
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXT = "The capital of France is Paris. Layer collapse keeps the first and last layers of a model."


def kept_layers(n_layers, merges):
    """Original layers a keep-first plan keeps, applying merges in genotype order."""
    groups = [[j] for j in range(n_layers)]
    for m in filter(None, merges.split(",")):
        b, e = (int(x) for x in m.split(":")[:2])
        cb = next(i for i, g in enumerate(groups) if b in g)
        ce = next(i for i, g in enumerate(groups) if e in g)
        if ce > cb:
            groups[cb:ce + 1] = [sum(groups[cb:ce + 1], [])]
    return [g[0] for g in groups]


def field_value(reader, key):
    f = reader.fields[key]
    return [f.parts[i].tolist() for i in f.data]


def main():
    source, hf_dir, gguf_out, merges = sys.argv[1:5]
    folder, name = os.path.split(os.path.abspath(source))
    result = {}
    ok = True

    ref = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                               attn_implementation="eager").eval()
    n = ref.config.num_hidden_layers
    keep = kept_layers(n, merges)
    ref.model.layers = torch.nn.ModuleList([ref.model.layers[j] for j in keep])
    for i, layer in enumerate(ref.model.layers):
        layer.self_attn.layer_idx = i
    ref.config.num_hidden_layers = len(keep)

    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    exported = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    with torch.no_grad():
        a = ref(torch.tensor([ids])).logits[0]
        b = exported(torch.tensor([ids])).logits[0]
    diff = (a - b).abs().max().item()
    result["hf"] = {
        "layers": exported.config.num_hidden_layers,
        "kept": keep,
        "tokens": len(ids),
        "max_abs_logit_difference": diff,
        "max_abs_logit": a.abs().max().item(),
        "same_top1": bool((a.argmax(-1) == b.argmax(-1)).all().item()),
    }
    ok &= exported.config.num_hidden_layers == len(keep) and result["hf"]["same_top1"] and diff < 1e-2

    src = GGUFReader(source)
    out = GGUFReader(gguf_out)
    arch = bytes(src.fields["general.architecture"].parts[-1]).decode()
    blocks = field_value(out, f"{arch}.block_count")[0][0]
    src_tensors = {t.name: t for t in src.tensors}
    identical = 0
    differing = []
    for t in out.tensors:
        if t.name.startswith("blk."):
            i, rest = t.name[4:].split(".", 1)
            origin = f"blk.{keep[int(i)]}.{rest}"
        else:
            origin = t.name
        s = src_tensors[origin]
        if s.tensor_type == t.tensor_type and np.array_equal(np.asarray(s.data).view(np.uint8), np.asarray(t.data).view(np.uint8)):
            identical += 1
        else:
            differing.append(t.name)
    result["gguf"] = {
        "block_count": int(blocks),
        "tensors": len(out.tensors),
        "source_tensors": len(src.tensors),
        "byte_identical": identical,
        "differing": differing,
        "alignment_source": src.alignment,
        "alignment_export": out.alignment,
    }
    per_layer = len(src.tensors) - sum(1 for t in src.tensors if not t.name.startswith("blk."))
    expected = len(src.tensors) - per_layer // n * (n - len(keep))
    ok &= blocks == len(keep) and len(out.tensors) == expected and not differing
    result["ok"] = bool(ok)
    print(json.dumps(result, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
