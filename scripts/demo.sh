#!/usr/bin/env bash
# The main job on the demo model, from the repository alone: set-up, build, a GeLaCo search
# (Pareto front of KL-based fitness against compression, each front
# solution judged on held-out validation text), then the recommended model removing about
# a fifth of the layers: its recipe, generation beside the original's, test perplexity and
# ARC-Easy beside the original's, and a GGUF export checked by reloading it.
# Data: assets/data (WikiText-2 validation to calibrate and validate, the head of WikiText-2
# test to report, 100 ARC-Easy questions). Extra arguments go to `gelaco search`
# (e.g. --max-seconds 1800, --device gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(bash scripts/setup.sh | tail -n 1)
cargo build --release --locked
bin=target/release/gelaco
data=assets/data
out=runs/demo-$(date +%Y%m%d-%H%M%S)
$bin inspect --model "$model"
$bin generate --model "$model" --prompt "The capital of France is" --max-new-tokens 16 --device cpu
$bin search --model "$model" --calib "$data/wiki.valid.raw" --samples 16 --max-seconds 420 --seed 1 --out "$out" --device cpu "$@"
# every front solution as a recipe; recommended-NNlayers.json: the lowest validation
# perplexity of its size
$bin front "$out" --recipes "$out/recipes"
recipe=$($bin front "$out" --json | python3 -c '
import json, sys
run = json.load(sys.stdin)
size = lambda s: s["remaining_layers"] if "remaining_layers" in s else s["result"]["remaining_layers"]
picks = [s for s in run["front"] + run.get("candidates", []) + run["baselines"] if s.get("recommended")]
layers = run["run"]["model"]["layers"]
best = min(picks, key=lambda s: abs(size(s) - round(0.8 * layers)))
print("recommended-%dlayers.json" % size(best))')
recipe="$out/recipes/$recipe"
echo "recommended: $recipe"
$bin compare --model "$model" --recipe "$recipe" --prompt "The capital of France is" --max-new-tokens 16 --device cpu
$bin eval --model "$model" --recipe "$recipe" --perplexity "$data/wiki.test.head.raw" --max-windows 8 \
  --task arc_easy="$data/arc-easy-test-100.jsonl" --device cpu
$bin export --model "$model" --recipe "$recipe" --format gguf --out "$out/compressed.gguf" --device cpu
