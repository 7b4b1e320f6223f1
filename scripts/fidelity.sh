#!/usr/bin/env bash
# The multi-fidelity benchmark on the demo model: a default Pareto search given a third of
# the wall time against the same search scoring every offspring on the full calibration
# (`--fidelity full:1`), each judged on text neither search optimises.
#
# Per seed, three searches with the same settings but the schedule and the time:
#   full        --fidelity full:1, FULL_SECONDS of search
#   multi/3     the schedule under test (FIDELITY, default: the tool's), a third of that
#   multi       the schedule under test, FULL_SECONDS (what the same time buys)
# Held-out quality of a final front: at each size of the band (2 to 15 removed layers), the
# lowest validation perplexity among the front and the candidates (the run's held-out
# validation text, 4 windows of 512 tokens; the picks are not healed here, so the figures
# judge the search alone), summarised as the geometric mean over the sizes every search
# reached; and the WikiText-2 test perplexity (first 8 windows of 512 tokens) of each run's
# recommended model at SIZES. Wall time is each whole command, validation included.
#
# Settings (environment): FULL_SECONDS (600), SEEDS ("1 2"), SIZES ("3 6 9 12"), SAMPLES
# (32 calibration samples of 128 tokens), FIDELITY (the schedule under test; unset: the
# tool's default), ARMS ("full multi/3 multi"), DEVICE (cpu), OUT (runs/fidelity-DATE; a
# rerun with the same OUT goes on where it stopped), BIN (a gelaco binary to use instead of
# building one), GELACO_DATA (../shared/data: wikitext2-raw-test.txt; without it the test
# column is left out). The table is written to OUT/fidelity.md and printed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench_env.sh
full_seconds=${FULL_SECONDS:-600}
seeds=${SEEDS:-1 2}
sizes=${SIZES:-3 6 9 12}
samples=${SAMPLES:-32}
device=${DEVICE:-cpu}
arms=${ARMS:-full multi/3 multi}
out=${OUT:-runs/fidelity-$(date +%Y%m%d-%H%M%S)}
test_text="${GELACO_DATA:-../shared/data}/wikitext2-raw-test.txt"
calib=assets/data/wiki.valid.raw
mkdir -p "$out"
schedule=()
[ -n "${FIDELITY:-}" ] && schedule=(--fidelity "$FIDELITY")

for seed in $seeds; do
  for arm in $arms; do
    name="$(echo "$arm" | tr / _)-s$seed"
    dir="$out/$name"
    [ -e "$dir/.done" ] && continue
    case $arm in
      full) args=(--fidelity full:1 --max-seconds "$full_seconds") ;;
      multi/3) args=("${schedule[@]}" --max-seconds $((full_seconds / 3))) ;;
      multi) args=("${schedule[@]}" --max-seconds "$full_seconds") ;;
      *) echo "fidelity.sh: unknown arm '$arm' in ARMS (full, multi/3, multi)" >&2; exit 2 ;;
    esac
    rm -rf "$dir"
    echo "== $name: search ${args[*]}" >&2
    start=$SECONDS
    $bin search --model "$model" --calib "$calib" --samples "$samples" --device "$device" --seed "$seed" \
      --heal-picks none "${args[@]}" --out "$dir" --json > "$dir.jsonl"
    echo $((SECONDS - start)) > "$dir.seconds"
    $bin front "$dir" --recipes "$dir/recipes" > /dev/null
    if [ -f "$test_text" ]; then
      layers=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"]["layers"])' "$dir/run.json")
      for r in $sizes; do
        rec="$dir/recipes/recommended-$((layers - r))layers.json"
        [ -f "$rec" ] || continue
        $bin eval --model "$model" --recipe "$rec" --no-original --perplexity "$test_text" --max-windows 8 \
          --device "$device" --json > "$dir/test-$r.json"
      done
    fi
    touch "$dir/.done"
  done
done

python3 - "$out" "$seeds" "$arms" "$sizes" "$full_seconds" <<'EOF'
import json, math, os, sys
out, seeds, arms, sizes, full_seconds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), [int(s) for s in sys.argv[4].split()], int(sys.argv[5])
def run(arm, seed):
    name = "%s-s%s" % (arm.replace("/", "_"), seed)
    d = os.path.join(out, name)
    layers = json.load(open(os.path.join(d, "run.json")))["model"]["layers"]
    best = {}
    for f in ("front.json", "candidates.json"):
        p = os.path.join(d, f)
        for e in (json.load(open(p)) if os.path.exists(p) else []):
            v = e.get("validation_perplexity")
            removed = len(e["psi"]) - e["remaining_layers"]
            if v is not None and 2 <= removed <= 15:
                best[removed] = min(v, best.get(removed, math.inf))
    progress = None
    for line in open(d + ".jsonl"):
        event = json.loads(line)
        if event.get("event") == "progress":
            progress = event
    test = {}
    for r in sizes:
        p = os.path.join(d, "test-%d.json" % r)
        if os.path.exists(p):
            test[r] = json.load(open(p))["models"][0]["perplexity"]["perplexity"]
    return {"best": best, "progress": progress or {}, "test": test, "wall": int(open(d + ".seconds").read())}
runs = {(a, s): run(a, s) for s in seeds for a in arms}
common = sorted(set.intersection(*(set(r["best"]) for r in runs.values())))
def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")
rows = ["| seed | search | search limit | wall time | generations | full evaluations | screened | "
        "validation ppl, geometric mean over %d sizes | " % len(common) + " | ".join("test ppl, %d removed" % r for r in sizes) + " |",
        "|" + "---|" * (8 + len(sizes))]
summary = {}
for s in seeds:
    for a in arms:
        r = runs[(a, s)]
        g = geomean([r["best"][k] for k in common])
        summary.setdefault(a, []).append((g, r["wall"], r["test"]))
        limit = {"full": full_seconds, "multi/3": full_seconds // 3, "multi": full_seconds}[a]
        p = r["progress"]
        rows.append("| %s | %s | %d s | %d s | %s | %s | %s | %.2f | %s |" % (
            s, a, limit, r["wall"], p.get("generation", "?"), p.get("evaluations", "?"), p.get("screened", "?"), g,
            " | ".join("%.2f" % r["test"][k] if k in r["test"] else "" for k in sizes)))
lines = []
if "full" in summary:
    base = summary["full"]
    for a in arms:
        if a == "full":
            continue
        ratio = geomean([x[0] / b[0] for x, b in zip(summary[a], base)])
        wall = sum(x[1] for x in summary[a]) / sum(b[1] for b in base)
        lines.append("%s against full: validation perplexity x%.3f (geometric mean over seeds; below 1 is better), "
                     "wall time x%.2f" % (a, ratio, wall))
text = ("Sizes compared (removed layers): %s\n\n" % ", ".join(map(str, common)) + "\n".join(rows) + "\n\n"
        + "\n".join(lines) + "\n")
open(os.path.join(out, "fidelity.md"), "w").write(text)
print(text)
EOF
