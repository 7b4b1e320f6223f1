#!/usr/bin/env bash
# The test suite on a fresh machine: set-up, one release build, then every test on that
# same build (unit, tiny models on CPU and WGPU, CLI, demo model vs transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh >/dev/null
cargo build --release --locked
# the core library builds without any window, terminal or argument-parsing crate
ui=$(cargo tree -p gelaco -e normal,build --prefix none --locked | grep -E '^(clap|egui|eframe|egui_plot|rfd|indicatif|winit) v' | sort -u || true)
if [ -n "$ui" ]; then
  echo "scripts/test.sh: the core crate depends on $ui" >&2
  exit 1
fi
cargo test --release --locked --no-fail-fast -- --test-threads=2
echo "scripts/test.sh: $(( $(date +%s) - start )) s" >&2
