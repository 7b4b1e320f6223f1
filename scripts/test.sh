#!/usr/bin/env bash
# The test suite on a fresh machine: set-up, one release build, then every test on that
# same build (unit, tiny models on CPU and WGPU, CLI, demo model vs transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh >/dev/null
cargo build --release --locked
cargo test --release --locked --no-fail-fast -- --test-threads=2
echo "scripts/test.sh: $(( $(date +%s) - start )) s" >&2
