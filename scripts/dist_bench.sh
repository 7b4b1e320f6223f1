#!/usr/bin/env bash
# The distributed-evaluation benchmark on the demo model: the same search run locally, then
# through a NATS JetStream server (started here on a free loopback port) with one worker and
# with two (`gelaco worker`, the coordinator leaving every evaluation to them), on this
# machine. Prints evaluations per second of each, the broker's overhead per evaluation (one
# worker: the coordinator's waiting time less the worker's evaluation time, per result, over
# the batches after the worker's start-up, which is loading the model and computing the
# reference activations, and is shown apart), and
# whether each front and evaluation log equals the local run's.
#
# Settings (environment): EVALUATIONS (48), POPULATION (8), SAMPLES (16 calibration samples
# of MAX_TOKENS=64 tokens), SEED (1), DEVICE (cpu), OUT (runs/dist-bench-DATE), BIN (a
# gelaco binary to use instead of building one). Needs nats-server (Debian package
# nats-server; scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench_env.sh
server=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$server" ] || { echo "dist_bench.sh: nats-server is not installed (Debian package nats-server)" >&2; exit 2; }
out=${OUT:-runs/dist-bench-$(date +%Y%m%d-%H%M%S)}
device=${DEVICE:-cpu}
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="nats://127.0.0.1:$port"
"$server" -js -a 127.0.0.1 -p "$port" -sd "$out/broker" > "$out/broker.log" 2>&1 &
broker=$!
workers=()
cleanup() { kill "${workers[@]}" "$broker" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

common=(--model "$model" --calib assets/data/wiki.valid.raw --samples "${SAMPLES:-16}" --max-tokens "${MAX_TOKENS:-64}"
  --population "${POPULATION:-8}" --evaluations "${EVALUATIONS:-48}" --seed "${SEED:-1}" --heal-picks none --validation none
  --device "$device" --json)
run() { # run NAME ARGS...: one search, its events and wall time
  local name=$1 start
  shift
  rm -rf "$out/$name"
  start=$(date +%s.%N)
  $bin search "${common[@]}" --out "$out/$name" "$@" > "$out/$name.jsonl"
  echo "$(date +%s.%N) - $start" | bc > "$out/$name.seconds"
}
start_workers() {
  for i in $(seq "$1"); do
    $bin worker --nats "$url" --name "bench-$i" --device "$device" --json > "$out/worker-$1-$i.jsonl" 2>/dev/null &
    workers+=($!)
  done
}
stop_workers() {
  kill -TERM "${workers[@]}" 2>/dev/null || true
  wait "${workers[@]}" 2>/dev/null || true
  workers=()
}

echo "== local" >&2
run local
echo "== one worker" >&2
start_workers 1
run one --nats "$url" --no-local-evaluation
stop_workers
echo "== two workers" >&2
start_workers 2
run two --nats "$url" --no-local-evaluation
stop_workers

python3 - "$out" <<'EOF'
import json, os, re, sys
out = sys.argv[1]
def load(name):
    progress, farm = {}, None
    for line in open(os.path.join(out, name + ".jsonl")):
        e = json.loads(line)
        if e.get("event") == "progress":
            progress = e
        if e.get("event") == "stage" and e["message"].startswith("through NATS"):
            farm = e["message"]
    evals = [json.loads(l) for l in open(os.path.join(out, name, "evaluations.jsonl"))]
    strip = lambda e: {k: e[k] for k in ("index", "generation", "genes", "key", "cached", "result")}
    return {
        "seconds": float(open(os.path.join(out, name + ".seconds")).read()),
        "computed": sum(1 for e in evals if not e["cached"]) + progress.get("screened", 0),
        "front": json.load(open(os.path.join(out, name, "front.json"))),
        "log": [strip(e) for e in evals],
        "farm": farm,
    }
runs = {n: load(n) for n in ("local", "one", "two")}
rows = ["| search | wall time | evaluations computed | evaluations/s | broker overhead per evaluation | front and log equal the local run's |",
        "|---|---|---|---|---|---|"]
for name, label in (("local", "local"), ("one", "1 worker"), ("two", "2 workers")):
    r = runs[name]
    overhead = ""
    if name == "one" and r["farm"]:
        m = re.search(r"([\d.]+) s of worker start-up; past start-up (-?[\d.]+) ms per result", r["farm"])
        if m:
            overhead = "%s ms (and %s s of start-up, once)" % (m.group(2), m.group(1))
    same = "" if name == "local" else ("yes" if r["front"] == runs["local"]["front"] and r["log"] == runs["local"]["log"] else "NO")
    rows.append("| %s | %.1f s | %d | %.2f | %s | %s |" % (label, r["seconds"], r["computed"], r["computed"] / r["seconds"], overhead, same))
text = "\n".join(rows) + "\n"
for name in ("one", "two"):
    text += "\n%s: %s" % (name, runs[name]["farm"])
print(text)
open(os.path.join(out, "dist-bench.md"), "w").write(text + "\n")
EOF
