#!/usr/bin/env bash
# The main job on the demo model: set-up, build, describe the model, generate, and
# measure WikiText-2 perplexity (first 20 windows of 512 tokens; --max-windows to change).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(bash scripts/setup.sh | tail -n 1)
cargo build --release --locked
bin=target/release/gelaco
$bin inspect --model "$model"
$bin generate --model "$model" --prompt "The capital of France is" --max-new-tokens 24 "$@"
$bin perplexity --model "$model" --text ../shared/data/wikitext2-raw-test.txt --max-windows 20 "$@"
