#!/usr/bin/env python3
"""An independent implementation of METHOD.md 1-3 on Hugging Face transformers, used once to
make `crates/gelaco/tests/fixtures/smollm2_fitness.json`:

    python3 crates/gelaco/tests/make_fitness_reference.py MODEL.gguf ../shared/data/wikitext-2-raw/wiki.valid.raw \
        > crates/gelaco/tests/fixtures/smollm2_fitness.json

Genotypes are decoded through psi as METHOD.md 1 writes it; compressed models are deep
copies with merged layers; module outputs come from forward hooks; cosines are taken per
sample over all positions, in float64.
"""
import copy
import json
import os
import sys

import torch
from tokenizers import Regex, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

SAMPLES, MIN_CHARS, MAX_TOKENS = 8, 40, 32
GENOTYPES = {
    "identity": [],
    "one span": [(20, 23)],
    "two disjoint spans": [(3, 5), (20, 22)],
    "overlap through psi": [(5, 7), (6, 9)],
    "long span": [(10, 25)],
}
OPS = ["rdsc", "mean", "keep-first", "keep-last"]
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


def decode(triples, n_layers):
    psi = list(range(n_layers))
    canonical = []
    for b, e in triples:
        if e <= b:
            continue
        cb, ce = psi[b], psi[e]
        if ce <= cb:
            continue
        for j in range(n_layers):
            if b <= j <= e:
                psi[j] = cb
            elif j > e:
                psi[j] -= ce - cb
        canonical.append((cb, ce))
    return canonical, psi


def merge_params(tensors, op):
    if op == "rdsc":
        base = tensors[0]
        return base + sum(t - base for t in tensors[1:])
    if op == "mean":
        return sum(tensors) / len(tensors)
    if op == "keep-first":
        return tensors[0].clone()
    if op == "keep-last":
        return tensors[-1].clone()
    raise ValueError(op)


def compress(model, canonical, op, keep_norms=False):
    m = copy.deepcopy(model)
    layers = list(m.model.layers)
    for cb, ce in canonical:
        group = layers[cb:ce + 1]
        merged = copy.deepcopy(group[0])
        params = [dict(l.named_parameters()) for l in group]
        with torch.no_grad():
            for name, p in merged.named_parameters():
                if keep_norms and "norm" in name:
                    continue
                p.copy_(merge_params([ps[name].detach() for ps in params], op))
        layers = layers[:cb] + [merged] + layers[ce + 1:]
    m.model.layers = torch.nn.ModuleList(layers)
    m.config.num_hidden_layers = len(layers)
    return m


def activations(model, ids):
    outs = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for name in ATTN:
            hooks.append(getattr(layer.self_attn, name).register_forward_hook(
                lambda _m, _i, o, k=(i, name): outs.__setitem__(k, o[0].double())))
        for name in MLP:
            hooks.append(getattr(layer.mlp, name).register_forward_hook(
                lambda _m, _i, o, k=(i, name): outs.__setitem__(k, o[0].double())))
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    for h in hooks:
        h.remove()
    return outs, out.hidden_states[-1][0].double()


def cos(a, b):
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm()))


def fitness(model, comp, psi, samples, n_layers):
    s_attn = s_ffn = s_hid = 0.0
    for ids in samples:
        o, of = activations(model, ids)
        c, cf = activations(comp, ids)
        a = sum(sum(cos(o[(j, n)], c[(psi[j], n)]) for n in ATTN) / 4 for j in range(n_layers)) / n_layers
        f = sum(sum(cos(o[(j, n)], c[(psi[j], n)]) for n in MLP) / 3 for j in range(n_layers)) / n_layers
        h = cos(of, cf)
        s_attn += a
        s_ffn += f
        s_hid += h
    n = len(samples)
    a, f, h = s_attn / n, s_ffn / n, s_hid / n
    return {"fitness": (a + f + h) / 3, "attention": a, "ffn": f, "hidden": h}


def main():
    model_path, calib_path = sys.argv[1], sys.argv[2]
    folder, name = os.path.split(os.path.abspath(model_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()
    n_layers = model.config.num_hidden_layers

    with open(calib_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    usable = [l.rstrip("\r").strip() for l in lines]
    usable = [l for l in usable if len(l) >= MIN_CHARS][:SAMPLES]
    samples = [backend.encode(l, add_special_tokens=False).ids[:MAX_TOKENS] for l in usable]

    cases = []
    for label, triples in GENOTYPES.items():
        canonical, psi = decode(triples, n_layers)
        for op in OPS:
            for keep_norms in ([False, True] if label == "one span" else [False]):
                comp = compress(model, canonical, op, keep_norms)
                r = fitness(model, comp, psi, samples, n_layers)
                r.update({"label": label, "merges": triples, "op": op, "keep_norms": keep_norms,
                          "canonical": canonical, "psi": psi})
                cases.append(r)
                print(label, op, keep_norms, round(r["fitness"], 6), file=sys.stderr)
    json.dump({"model": name, "calibration": {"file": os.path.basename(calib_path), "samples": SAMPLES,
               "min_chars": MIN_CHARS, "max_tokens": MAX_TOKENS, "token_ids": samples},
               "cases": cases}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
