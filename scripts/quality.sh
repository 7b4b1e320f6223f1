#!/usr/bin/env bash
# The quality benchmark on the demo model, in one run: at several sizes (removed layers),
# the tool's recommended model (a default search, picked by validation perplexity only)
# against ShortGPT, LaCo, SLEB, EvoPress and the paper-faithful GeLaCo search, on
# WikiText-2 test perplexity (first 8 windows of 512 tokens) and ARC-Easy, PIQA and
# HellaSwag (first LIMIT items each), with each method's wall time on this machine.
#
# Everything is calibrated on the same text: the WikiText-2 validation text shipped in
# assets/data (the search validates on its rest, disjoint from the calibration samples).
# The benchmarks are read from GELACO_DATA (default ../shared/data): wikitext2-raw-test.txt,
# arc/ARC-Easy-Test.jsonl, piqa/dev.jsonl (+ dev-labels.lst), hellaswag/hellaswag_val_full.txt.
#
# Settings (environment): SIZES (default "3 6 9 12"), LIMIT (items per task, default 200;
# 0 skips the tasks), SAMPLES (calibration samples of 128 tokens, default 32),
# SEARCH_SECONDS (the default search's wall-time limit, default 1800), PAPER_SECONDS (the
# paper-faithful search's, default 1800), EVOPRESS_GENERATIONS (default 20), HEAL_SAMPLES
# (the samples ShortGPT's plans are healed on for the "ShortGPT (healed)" rows, default 128,
# as the search heals its picks), SEED (1),
# DEVICE (cpu), OUT (runs/quality-DATE; a rerun with the same OUT goes on where it stopped),
# BIN (a gelaco binary to use instead of building one), LACO_THRESHOLDS (the sweep), METHODS (which
# rows to compute, default "gelaco paper shortgpt sleb evopress laco"; gelaco is always run). The table is written to OUT/quality.md and
# printed; every intermediate result (run folders, recipes, JSON) stays in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench_env.sh
data=${GELACO_DATA:-../shared/data}
calib=assets/data/wiki.valid.raw
sizes=${SIZES:-3 6 9 12}
limit=${LIMIT:-200}
samples=${SAMPLES:-32}
search_seconds=${SEARCH_SECONDS:-1800}
paper_seconds=${PAPER_SECONDS:-1800}
evopress_generations=${EVOPRESS_GENERATIONS:-20}
heal_samples=${HEAL_SAMPLES:-128}
seed=${SEED:-1}
device=${DEVICE:-cpu}
out=${OUT:-runs/quality-$(date +%Y%m%d-%H%M%S)}
test_text="$data/wikitext2-raw-test.txt"
for f in "$test_text" "$data/arc/ARC-Easy-Test.jsonl" "$data/piqa/dev.jsonl" "$data/piqa/dev-labels.lst" \
  "$data/hellaswag/hellaswag_val_full.txt"; do
  [ -f "$f" ] || { echo "quality.sh: missing benchmark file $f (set GELACO_DATA to the folder holding it)" >&2; exit 2; }
done
mkdir -p "$out"/recipes
remove=$(echo $sizes | tr ' ' ',')
common=(--model "$model" --calib "$calib" --samples "$samples" --device "$device")
methods=" gelaco ${METHODS:-paper shortgpt sleb evopress laco} "
timed() { # timed NAME OUTPUT COMMAND...: run once, stdout to OUTPUT (a rerun with the same OUT skips what
  # is done), record the wall time; methods left out of METHODS are skipped
  local name=$1 output=$2 start=$SECONDS
  shift 2
  [[ "$methods" == *" ${name%%-*} "* ]] || return 0
  [ -e "$out/.done/$name" ] && return
  echo "== $name: $*" >&2
  "$@" > "$output"
  echo "$name $((SECONDS - start))" >> "$out/times.txt"
  touch "$out/.done/$name"
}
mkdir -p "$out/.done"

# the tool's recommendation: a default search, every front solution validated on held-out text
timed gelaco "$out/gelaco.jsonl" $bin search "${common[@]}" --max-seconds "$search_seconds" --seed "$seed" --out "$out/gelaco" --json
[ -d "$out/gelaco/recipes" ] || $bin front "$out/gelaco" --recipes "$out/gelaco/recipes" > /dev/null
# the paper's method as published
timed paper "$out/paper.jsonl" $bin search "${common[@]}" --objective similarity --heal none --merge-op rdsc --init paper \
  --fidelity full:1 --max-seconds "$paper_seconds" --seed "$seed" --out "$out/paper" --json
[ ! -d "$out/paper" ] || [ -d "$out/paper/recipes" ] || $bin front "$out/paper" --recipes "$out/paper/recipes" > /dev/null
# the baselines as published: no healing
timed shortgpt "$out/shortgpt.json" $bin baseline shortgpt "${common[@]}" --heal none --remove "$remove" --recipes "$out/recipes" --json
timed sleb "$out/sleb.json" $bin baseline sleb "${common[@]}" --objective nll --heal none --remove "$remove" --recipes "$out/recipes" --json
timed evopress "$out/evopress.json" $bin baseline evopress "${common[@]}" --objective kl --heal none --remove "$remove" \
  --generations "$evopress_generations" --seed "$seed" --recipes "$out/recipes" --json
# what the tool's healing alone gives: ShortGPT's plans healed as the search heals its picks
# (HEAL_SAMPLES calibration samples; the recommended models are picked and healed the same way)
heal_shortgpt() {
  for rec in "$out"/recipes/shortgpt-[0-9]*layers.json; do
    [ -e "$rec" ] || continue
    $bin fitness --model "$model" --calib "$calib" --device "$device" --samples "$heal_samples" --objective nll \
      --recipe "$rec" --heal linear --save-recipe "${rec%.json}-healed.json" --force --json > /dev/null
  done
}
timed shortgpt-healed /dev/null heal_shortgpt
# LaCo has no size setting: its threshold decides; a sweep, keeping the plan nearest each size.
# Its own operator (rdsc) ruins spans of 3 layers and more on this model (README, merge
# operators), so that no threshold merges anything; LaCo runs here with keep-first.
mkdir -p "$out/laco"
for t in ${LACO_THRESHOLDS:-0.95 0.9 0.85 0.8 0.7 0.6}; do
  timed "laco-$t" "$out/laco/t$t.json" $bin baseline laco "${common[@]}" --merge-op keep-first --threshold "$t" --json
done

# which model stands for each method at each size: a recipe, or merges (LaCo)
python3 - "$out" "$sizes" "$methods" <<'EOF'
import glob, json, os, sys
out, sizes, methods = sys.argv[1], [int(s) for s in sys.argv[2].split()], sys.argv[3].split()
layers = json.load(open(os.path.join(out, "gelaco", "run.json")))["model"]["layers"]
laco = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "laco/t*.json")))]
picks = []
for r in sizes:
    keep = layers - r
    for key, method, pattern in [("gelaco", "GeLaCo (recommended)", "gelaco/recipes/recommended-%dlayers.json"),
                                 ("paper", "GeLaCo (paper)", "paper/recipes/recommended-%dlayers.json"),
                                 ("shortgpt", "ShortGPT", "recipes/shortgpt-%dlayers.json"),
                                 ("shortgpt", "ShortGPT", "recipes/shortgpt-%dlayers-healed.json"),
                                 ("sleb", "SLEB", "recipes/sleb-%dlayers.json"),
                                 ("evopress", "EvoPress", "recipes/evopress-%dlayers.json")]:
        if key not in methods:
            continue
        p = os.path.join(out, pattern % keep)
        time = "shortgpt-healed" if p.endswith("-healed.json") else None
        picks.append({"removed": r, "method": method, "recipe": p, "time": time} if os.path.exists(p) else
                     {"removed": r, "method": method, "time": time})
    if "laco" not in methods:
        continue
    near = sorted(laco, key=lambda s: (abs(s["remaining_layers"] - keep), -s["fitness"]))
    picks.append({"removed": r, "method": "LaCo (keep-first)", "merges": near[0]["merges"]}
                 if near and near[0]["merges"] else {"removed": r, "method": "LaCo (keep-first)"})
json.dump(picks, open(os.path.join(out, "picks.json"), "w"), indent=1)
EOF

tasks=()
if [ "$limit" -gt 0 ]; then
  tasks=(--task arc_easy="$data/arc/ARC-Easy-Test.jsonl" --task piqa="$data/piqa/dev.jsonl"
    --task hellaswag="$data/hellaswag/hellaswag_val_full.txt" --limit "$limit")
fi
evaluate() { # evaluate NAME VARIANT-ARGS...: one model's test perplexity and tasks, to OUT/eval/NAME.json
  local name=$1
  shift
  [ -s "$out/eval/$name.json" ] && return
  $bin eval --model "$model" "$@" "${tasks[@]}" --perplexity "$test_text" --max-windows 8 --device "$device" --json \
    > "$out/eval/$name.json.part"
  mv "$out/eval/$name.json.part" "$out/eval/$name.json"
}
mkdir -p "$out/eval"
start=$SECONDS
evaluate original
i=0
while IFS=$'\t' read -r kind value; do
  i=$((i + 1))
  case $kind in
    recipe) evaluate "pick$i" --recipe "$value" --no-original ;;
    merges) evaluate "pick$i" --merges "$value" --merge-op keep-first --no-original ;;
  esac
done < <(python3 -c '
import json, sys
for p in json.load(open(sys.argv[1])):
    print("recipe\t" + p["recipe"] if "recipe" in p else "merges\t" + p["merges"] if "merges" in p else "none\t-")' "$out/picks.json")
echo "eval $((SECONDS - start))" >> "$out/times.txt"

python3 - "$out" "$limit" "$samples" <<'EOF'
import json, os, sys
out, limit, samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
picks = json.load(open(os.path.join(out, "picks.json")))
times = {}
for line in open(os.path.join(out, "times.txt")):
    name, s = line.split()
    times[name] = times.get(name, 0) + int(s)
times["laco"] = sum(v for k, v in times.items() if k.startswith("laco-"))
method_time = {"GeLaCo (recommended)": "gelaco", "GeLaCo (paper)": "paper", "ShortGPT": "shortgpt",
               "SLEB": "sleb", "EvoPress": "evopress", "LaCo (keep-first)": "laco"}
def load(name):
    return json.load(open(os.path.join(out, "eval", name + ".json")))["models"][0]
original = load("original")
task_names = [t["task"] for t in original["tasks"]]
def cells(m):
    c = ["%.2f" % m["perplexity"]["perplexity"]]
    for t in m["tasks"]:
        c.append("%.1f±%.1f" % (100 * t["acc_norm"], 100 * t["acc_norm_stderr"]))
    return c
rows = ["| removed | method | merges | layers | test ppl | " + " | ".join(task_names) + " | wall time |",
        "|" + "---|" * (6 + len(task_names)),
        "| 0 | original | | %d | " % original["layers"] + " | ".join(cells(original)) + " | |"]
for i, p in enumerate(picks, 1):
    if "recipe" not in p and "merges" not in p:
        rows.append("| %d | %s | (no plan of this size) | | |%s |" % (p["removed"], p["method"], " |" * len(task_names)))
        continue
    m = load("pick%d" % i)
    healed = ""
    heal = json.load(open(p["recipe"])).get("heal") if "recipe" in p else None
    if heal and heal.get("method", "none") != "none":
        healed = " (healed)"
    origin = json.load(open(p["recipe"])).get("origin", "") if "recipe" in p else ""
    if p["method"].startswith("GeLaCo") and " baseline " in origin:
        # validation picked one of the run's own baselines at this size
        healed += " = " + origin.split(" baseline ", 1)[1]
    rows.append("| %d | %s%s | %s | %d | %s | %s s |" % (p["removed"], p["method"], healed, m["merges"], m["layers"],
                                                        " | ".join(cells(m)), times.get(p.get("time") or method_time[p["method"]], "?")))
head = ("Demo model; calibration: %d samples of 128 tokens of WikiText-2 validation; test ppl: first 8 windows "
        "of 512 tokens of WikiText-2 test; tasks: first %d items each, acc_norm in %% ± standard error; wall time: "
        "the method's whole run on this machine (one run gives every size)." % (samples, limit))
text = head + "\n\n" + "\n".join(rows) + "\n"
open(os.path.join(out, "quality.md"), "w").write(text)
print(text)
EOF
