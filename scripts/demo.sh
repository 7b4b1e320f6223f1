#!/usr/bin/env bash
# The main job on the demo model: set-up, build, a short GeLaCo search (Pareto front of
# fitness against compression, with the LaCo and ShortGPT baselines), then for the front's
# most compressed model with fitness >= 0.8: its recipe, generation beside the original's,
# perplexity and ARC-Easy (first 100 items) beside the original's, and a GGUF export.
# Extra arguments go to `gelaco search` (e.g. --evaluations 2000, --device gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(bash scripts/setup.sh | tail -n 1)
cargo build --release --locked
bin=target/release/gelaco
data=../shared/data
out=runs/demo-$(date +%Y%m%d-%H%M%S)
$bin inspect --model "$model"
$bin generate --model "$model" --prompt "The capital of France is" --max-new-tokens 16 --device cpu
$bin search --model "$model" --calib "$data/wikitext-2-raw/wiki.valid.raw" --samples 16 --max-tokens 64 \
  --population 24 --evaluations 480 --seed 1 --baselines --out "$out" "$@"
# every front solution and baseline as a recipe; pick the most compressed with fitness >= 0.8
$bin front "$out" --recipes "$out/recipes"
recipe=$($bin front "$out" --json | python3 -c '
import json, sys
front = json.load(sys.stdin)["front"]
good = [(i, f) for i, f in enumerate(front) if f["fitness"] >= 0.8] or list(enumerate(front))
i, f = max(good, key=lambda p: p[1]["compression"])
print("front-%02d-%dlayers.json" % (i, f["remaining_layers"]))')
recipe="$out/recipes/$recipe"
echo "chosen: $recipe"
$bin compare --model "$model" --recipe "$recipe" --prompt "The capital of France is" --max-new-tokens 16 --device cpu
$bin eval --model "$model" --recipe "$recipe" --perplexity "$data/wikitext2-raw-test.txt" --max-windows 8 \
  --task arc_easy="$data/arc/ARC-Easy-Test.jsonl" --limit 100 --device cpu
$bin export --model "$model" --recipe "$recipe" --format gguf --out "$out/compressed.gguf" --device cpu
