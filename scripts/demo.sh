#!/usr/bin/env bash
# The main job on the demo model: set-up, build, a short GeLaCo search (Pareto front of
# fitness against compression, with the LaCo and ShortGPT baselines), then the perplexity
# of the original model and of the front's most compressed model with fitness >= 0.8.
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
merges=$($bin front "$out" --json | python3 -c '
import json, sys
front = json.load(sys.stdin)["front"]
good = [f for f in front if f["fitness"] >= 0.8] or front
print(max(good, key=lambda f: f["compression"])["merges"])')
echo "perplexity, original model:"
$bin perplexity --model "$model" --text "$data/wikitext2-raw-test.txt" --max-windows 8 --device cpu
echo "perplexity, compressed with --merges $merges:"
$bin perplexity --model "$model" --text "$data/wikitext2-raw-test.txt" --max-windows 8 --device cpu --merges "$merges"
$bin generate --model "$model" --prompt "The capital of France is" --max-new-tokens 16 --device cpu --merges "$merges"
