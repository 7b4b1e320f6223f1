#!/usr/bin/env bash
# GPU figures in one table, on whatever adapter `--device gpu` finds (a real GPU where there
# is one, else a software one such as Mesa's lavapipe): the adapter, prefill throughput
# against the CPU backend, fitness evaluations against the bound the adapter's own measured
# matmul rate sets (the target on a real GPU: within 3x), matrix products with the weights
# kept as stored (each GGUF block type, F16, BF16) against f32 products of the same values,
# fitness and products again with `--precision f16` where the adapter's shaders have f16,
# the scale shapes through fitness, and the parity tests of the WGPU path (logits and fitness of the demo model
# against transformers and PyTorch). Every figure is measured in this run.
#
# Settings (environment): DEVICE (gpu; gpu:N for another adapter), PLANS (12 random plans
# per fitness measurement), OBJECTIVES ("similarity kl"), SHAPES (the scale shapes,
# default "llama-3.2-1b llama-3-8b"; "none" skips them), BUDGET (a memory budget for the
# scale shapes' fitness, e.g. 8G; default: the tool's), PARITY (1; 0 skips the parity
# tests, which build the test binaries and run on the adapter `--device gpu` takes), OUT
# (runs/gpu-check-DATE), BIN, MODEL. The table is written to OUT/gpu_check.md and printed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench_env.sh
device=${DEVICE:-gpu}
plans=${PLANS:-12}
objectives=${OBJECTIVES:-similarity kl}
shapes=${SHAPES:-llama-3.2-1b llama-3-8b}
out=${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
calib=assets/data/wiki.valid.raw
mkdir -p "$out"
table=$out/gpu_check.md

"$bin" devices --json >"$out/devices.json"
adapter=$(python3 - "$out/devices.json" "$device" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
want = sys.argv[2]
index = 0 if want == "gpu" else int(want.split(":")[1]) if want.startswith("gpu:") else None
a = d["adapters"]
if index is None or index >= len(a):
    sys.exit(f"gpu_check.sh: no WGPU adapter {want} (gelaco devices lists {len(a)})")
x = a[index]
print(f'{x["name"]} [{x["api"]}, {x["type"]}{"" if x["hardware"] else ", software"}{", f16" if x.get("f16") else ""}]')
PY
)
precisions=f32
case "$adapter" in *", f16]") precisions="f32 f16" ;; esac
{
  echo "| check | figure |"
  echo "|---|---|"
  echo "| adapter ($device) | $adapter |"
} >"$table"
row() { echo "| $1 | $2 |" >>"$table"; }

# prefill: the adapter against the CPU backend, same shapes, same run
"$bin" bench --suite prefill --model "$model" --devices "cpu,$device" --json >"$out/prefill.json"
python3 - "$out/prefill.json" >>"$table" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
for r in rows[len(rows) // 2:]:
    print(f'| prefill {r["batch"]} x {r["seq"]} tokens | {r["tokens_per_second"]:.0f} tokens/s, {r["ratio_to_first"]:.2f}x the CPU backend |')
PY

# fitness: seconds per evaluation against the adapter's matmul bound, in each precision
for precision in $precisions; do
for objective in $objectives; do
  "$bin" bench --suite fitness --model "$model" --calib "$calib" --devices "$device" --plans "$plans" --objective "$objective" --precision "$precision" --json >"$out/fitness-$objective-$precision.json"
  python3 - "$out/fitness-$objective-$precision.json" "$objective" "$precision" >>"$table" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))[0]
print(f'| fitness ({sys.argv[2]}, {sys.argv[3]}, {r["samples"]} x 64 tokens, {r["plans"]} plans) | {r["engine_seconds_per_evaluation"]:.3f} s per evaluation = '
      f'{r["ratio_to_matmul_bound"]:.2f}x its {r["matmul_flops_per_evaluation"] / 1e9:.1f} GFLOP at the measured {r["matmul_flops_per_second"] / 1e9:.1f} GFLOP/s; '
      f'{r["ratio"]:.1f}x the straightforward evaluation |')
PY
done
done

# products with the weights as stored on the device, in each precision, against an f32
# product, same run
for precision in $precisions; do
"$bin" bench --suite products --model "$model" --devices "$device" --precision "$precision" --json >"$out/products-$precision.json"
python3 - "$out/products-$precision.json" >>"$table" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(f'| product {r["tokens"]} x {r["cols"]} x {r["rows"]}, {r["type"]} ({r["path"]}, {r["precision"]}) | {r["gflops"]:.1f} GFLOP/s, {r["ratio_to_f32"]:.2f}x the f32 product '
          f'({r["f32_gflops"]:.1f} GFLOP/s); weights {r["weights_bytes"] / 2**20:.1f} MiB against {r["f32_bytes"] / 2**20:.1f}; difference {r["difference"]:.1e} |')
PY
done

# scale shapes: peak memory and time of fitness on the adapter
if [ "$shapes" != none ]; then
  budgets=
  [ -z "${BUDGET:-}" ] || for s in $shapes; do budgets="$budgets $s=$BUDGET"; done
  SHAPES="$shapes" DEVICES="$device" SEARCH=0 BUDGETS="$budgets" DIR="${SCALE_DIR:-runs/scale}" BIN="$bin" MODEL="$model" \
    bash scripts/scale.sh >"$out/scale.txt" 2>"$out/scale.err"
  grep -E '^\| [a-z0-9.-]+ \| [a-z0-9:]+ \| ' "$out/scale.txt" | grep -v '^| shape' | while IFS='|' read -r _ shape dev label peak wall result; do
    row "scale: $(echo $shape) $(echo $label)" "peak memory $(echo $peak), $(echo $wall), $(echo $result)"
  done
fi

# parity of the WGPU path with the reference implementations (built here when needed)
if [ "${PARITY:-1}" = 1 ]; then
  if cargo test --release --locked --test demo_model wgpu -- --test-threads=1 >"$out/parity.txt" 2>&1; then
    row "parity on WGPU (demo model: logits vs transformers, fitness vs PyTorch)" "$(grep -Eo 'test result: [^;]+; [0-9]+ failed' "$out/parity.txt" | tail -1)"
  else
    row "parity on WGPU (demo model: logits vs transformers, fitness vs PyTorch)" "FAILED (see $out/parity.txt)"
  fi
fi

cat "$table"
