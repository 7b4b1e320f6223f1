#!/usr/bin/env bash
# The scale benchmark: random-weight GGUF models of real shapes (written by
# `gelaco bench --suite scale`), each run through inspect, fitness (16 x 64 tokens) and a
# 2-generation search, with peak memory (resident set) and wall time per command.
#   SHAPES="llama-3.2-1b llama-2-7b"  the shapes (default: all five)
#   DEVICES="cpu gpu"                 the backends (default: cpu)
#   DIR=runs/scale                    where the models and runs go
#   SEARCH=0                          skip the searches
#   PLAIN=0                           skip fitness and search under the default budget
#   BUDGETS="llama-3-8b=4G"          also run fitness (and the search, unless SEARCH=0) of
#                                     these shapes under these budgets
#   BIN, MODEL                        a gelaco binary and the vocabulary's model to use
#                                     (default: a release build here, the demo model)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
. scripts/bench_env.sh
DIR=${DIR:-runs/scale}
SHAPES=${SHAPES:-"llama-3.2-1b llama-3.2-3b llama-2-7b llama-3-8b mistral-7b"}
DEVICES=${DEVICES:-cpu}
SEARCH=${SEARCH:-1}
calib=assets/data/wiki.valid.raw
mkdir -p "$DIR"
"$bin" bench --suite scale --model "$model" --scale-dir "$DIR" --shapes "$(echo $SHAPES | tr ' ' ',')"
echo
echo "| shape | device | command | peak memory | wall time | result |"
echo "|---|---|---|---|---|---|"
measure() { # shape device label command...
  local shape=$1 device=$2 label=$3; shift 3
  local log=$DIR/$shape-$device-$label.log
  if /usr/bin/time -f "%M %e" -o "$log.time" "$@" >"$log" 2>&1; then ok=1; else ok=0; fi
  read -r kb secs < <(tail -1 "$log.time") || true
  local result
  if [ $ok = 1 ]; then result=$(grep -Eo '"fitness": [0-9.e-]+' "$log" | head -1 || true); else result="failed: $(grep -m1 error: "$log" || tail -1 "$log")"; fi
  printf '| %s | %s | %s | %s GiB | %s s | %s |\n' "$shape" "$device" "$label" "$(awk -v k="${kb:-0}" 'BEGIN { printf "%.2f", k / 1048576 }')" "${secs:-?}" "${result:-ok}"
}
search() { # shape device model [budget flags...]: a 2-generation search of 8 plans
  local shape=$1 device=$2 m=$3; shift 3
  local out=$DIR/search-$shape-$device${2:+-$2}
  rm -rf "$out"
  measure "$shape" "$device" "search (2 generations)${1:+ $1 $2}" "$bin" search --model "$m" --calib "$calib" --samples 16 --max-tokens 64 --generations 2 --population 8 --validation none --heal-picks none --out "$out" --device "$device" --json "$@"
}
for shape in $SHAPES; do
  m=$DIR/$shape.gguf
  layers=$("$bin" inspect --model "$m" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["layers"])')
  merges="$((layers / 2)):$((layers / 2 + 2))"
  for device in $DEVICES; do
    measure "$shape" "$device" inspect "$bin" inspect --model "$m" --device "$device"
    [ "${PLAIN:-1}" = 0 ] || measure "$shape" "$device" fitness "$bin" fitness --model "$m" --calib "$calib" --samples 16 --max-tokens 64 --merges "$merges" --device "$device" --json
    if [ "$SEARCH" = 1 ] && [ "${PLAIN:-1}" != 0 ]; then search "$shape" "$device" "$m"; fi
    for pair in ${BUDGETS:-}; do
      [ "${pair%%=*}" = "$shape" ] || continue
      budget=${pair#*=}
      measure "$shape" "$device" "fitness --memory-budget $budget" "$bin" fitness --model "$m" --calib "$calib" --samples 16 --max-tokens 64 --merges "$merges" --device "$device" --memory-budget "$budget" --json
      if [ "$SEARCH" = 1 ]; then search "$shape" "$device" "$m" --memory-budget "$budget"; fi
    done
  done
done
