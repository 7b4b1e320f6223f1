#!/usr/bin/env python3
"""Check `gelaco eval`'s multiple-choice scoring against an independent PyTorch one.

Needs torch and transformers (the Rust tests do not). Usage:

    gelaco eval --model MODEL.gguf --task arc_easy=ARC-Easy-Test.jsonl --limit N --json > ours.json
    python3 tests/check_choice.py MODEL.gguf ARC-Easy-Test.jsonl N ours.json

The script scores the first N ARC items the way lm-evaluation-harness does (prompt
"Question: {stem}\\nAnswer:", choices " {text}", context and continuation encoded as a
pair, summed log-likelihood of the continuation, acc_norm per byte of the choice) with
transformers on the GGUF dequantised to float32, and compares per-item correctness and
the accuracies with gelaco's. transformers' GGUF tokenizer conversion drops the demo
model's digit-splitting rule, so the script installs llama.cpp's rule, as
tests/make_reference.py does.
"""
import json
import os
import sys

import torch
from tokenizers import Regex, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer


def encode_pair(tok, context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def main():
    model_path, data, limit, ours_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    folder, name = os.path.split(os.path.abspath(model_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    items = [json.loads(l) for l in open(data) if l.strip()][:limit]
    acc, norm = [], []
    for it in items:
        q = it["question"]
        labels = [c["label"] for c in q["choices"]]
        texts = [c["text"] for c in q["choices"]]
        gold = labels.index(it["answerKey"])
        context = f"Question: {q['stem']}\nAnswer:"
        lls = []
        for t in texts:
            ctx, cont = encode_pair(tok, context, " " + t)
            ids = torch.tensor([(ctx + cont)[:-1]])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            positions = range(len(ctx) - 1, len(ctx) - 1 + len(cont))
            lls.append(sum(logp[p, c].item() for p, c in zip(positions, cont)))
        acc.append(max(range(len(lls)), key=lambda i: lls[i]) == gold)
        normed = [l / len(t.encode()) for l, t in zip(lls, texts)]
        norm.append(max(range(len(normed)), key=lambda i: normed[i]) == gold)
    ours = json.load(open(ours_path))
    task = ours["models"][0]["tasks"][0]
    same = sum(a == b for a, b in zip(acc, task["correct"]))
    result = {
        "items": len(items),
        "torch_acc": sum(acc) / len(acc),
        "torch_acc_norm": sum(norm) / len(norm),
        "gelaco_acc": task["acc"],
        "gelaco_acc_norm": task["acc_norm"],
        "items_with_the_same_acc_outcome": same,
    }
    print(json.dumps(result, indent=2))
    sys.exit(0 if same == len(items) else 1)


if __name__ == "__main__":
    main()
