#!/usr/bin/env bash
# The test suite on a fresh machine: set-up, one release build, then every test on that
# same build (unit, tiny models on CPU and WGPU, CLI, demo model vs transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh >/dev/null
# per-crate build times land in target/cargo-timings/ (cargo-timing.html)
cargo build --release --locked --timings
# the core library builds without any window, terminal or argument-parsing crate
ui=$(cargo tree -p gelaco -e normal,build --prefix none --locked | grep -E '^(clap|egui|eframe|egui_plot|rfd|indicatif|winit) v' | sort -u || true)
if [ -n "$ui" ]; then
  echo "scripts/test.sh: the core crate depends on $ui" >&2
  exit 1
fi
# the few tests that read full benchmark files (marked ignored) run where their folder is
data=${GELACO_DATA:-../shared/data}
if [ -d "$data" ]; then
  export GELACO_DATA=$(cd "$data" && pwd)
  ignored=(--include-ignored)
  skipped=
else
  ignored=()
  skipped="the tests that read full benchmark files were not run: no folder $data (set GELACO_DATA to the folder holding them)"
  echo "scripts/test.sh: $skipped" >&2
fi
cargo test --release --locked --no-fail-fast -- --test-threads=2 "${ignored[@]}"
[ -z "$skipped" ] || echo "scripts/test.sh: $skipped" >&2
echo "scripts/test.sh: $(( $(date +%s) - start )) s" >&2
