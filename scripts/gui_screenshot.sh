#!/usr/bin/env bash
# The window on the demo model under a virtual X server: a short search with baselines,
# screenshots in the dark and the light theme (docs/gui-dark.png, docs/gui-light.png), and
# frame times while the search runs (median and worst, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(bash scripts/setup.sh | tail -1)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
for p in xvfb xauth imagemagick libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --locked
BIN=target/release/gelaco
EVALS=${EVALS:-240}
SHOT_AT=${SHOT_AT:-150}
work=$(mktemp -d)
trap 'kill "${xvfb:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

Xvfb :77 -screen 0 1440x900x24 -nolisten tcp >/dev/null 2>&1 &
xvfb=$!
sleep 2
export DISPLAY=:77 LIBGL_ALWAYS_SOFTWARE=1

# dark: a live search, captured while it runs
"$BIN" gui --model "$MODEL" --run --evaluations "$EVALS" --select-best --theme dark --fresh \
  --out "$work/run" --exit-after $((SHOT_AT + 20)) --frame-stats "$work/frames.json" &
app=$!
sleep "$SHOT_AT"
import -window root docs/gui-dark.png
wait "$app"

# light: the same run folder, shown after the search
"$BIN" gui --model "$MODEL" --load-run "$work/run" --select-best --theme light --fresh --exit-after 25 &
app=$!
sleep 18
import -window root docs/gui-light.png
wait "$app"

python3 - "$work/frames.json" <<'PY'
import json, statistics, sys
f = json.load(open(sys.argv[1]))
b, i = f["build_ms"], f["interval_ms"]
print(f"frames built: {len(b)}; build time median {statistics.median(b):.2f} ms, worst {max(b):.2f} ms")
if i:
    print(f"while the search ran: {len(i)} frames, interval median {statistics.median(i):.1f} ms, worst {max(i):.1f} ms")
PY
echo "screenshots: docs/gui-dark.png docs/gui-light.png"
