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
# paper-faithful search's, default 1800), EVOPRESS_GENERATIONS (default 20), EVOPRESS_SIZES
# (the sizes whose EvoPress search this call runs, default SIZES: one search per size, each
# kept once done), HEAL_SAMPLES (the samples ShortGPT's plans are healed on for the
# "ShortGPT (healed)" rows, default 512, as the search heals its picks), SEED (1), DEVICE
# (cpu), OUT (runs/quality-DATE), BIN (a gelaco binary to use instead of building one),
# LACO_THRESHOLDS (the sweep), METHODS (which methods this call computes, default "gelaco
# paper shortgpt sleb evopress laco"), EVALUATE (1: evaluate every model whose method is
# done and not yet evaluated; 0: leave that for a later call).
#
# The work can be spread over several calls with the same OUT: each method, each healing
# and each model's evaluation is kept in OUT once done and never computed again, so a call
# with METHODS=sleb EVALUATE=0 adds SLEB's plans, and a later call with EVALUATE=1
# evaluates whatever is new. The table (OUT/quality.md, also printed) always has a row for
# every method at every size and says which are still to run. times.txt records each
# method's wall time with the day it ran (machine speed varies between days).
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
evopress_sizes=${EVOPRESS_SIZES:-$sizes}
laco_thresholds=${LACO_THRESHOLDS:-0.95 0.9 0.85 0.8 0.7 0.6}
heal_samples=${HEAL_SAMPLES:-512}
seed=${SEED:-1}
device=${DEVICE:-cpu}
out=${OUT:-runs/quality-$(date +%Y%m%d-%H%M%S)}
test_text="$data/wikitext2-raw-test.txt"
for f in "$test_text" "$data/arc/ARC-Easy-Test.jsonl" "$data/piqa/dev.jsonl" "$data/piqa/dev-labels.lst" \
  "$data/hellaswag/hellaswag_val_full.txt"; do
  [ -f "$f" ] || { echo "quality.sh: missing benchmark file $f (set GELACO_DATA to the folder holding it)" >&2; exit 2; }
done
mkdir -p "$out"/recipes "$out/.done"
remove=$(echo $sizes | tr ' ' ',')
common=(--model "$model" --calib "$calib" --samples "$samples" --device "$device")
methods=" ${METHODS:-gelaco paper shortgpt sleb evopress laco} "
timed() { # timed NAME OUTPUT COMMAND...: run once, stdout to OUTPUT (a rerun with the same OUT skips what
  # is done), record the wall time and the day; methods left out of METHODS are skipped
  local name=$1 output=$2 start=$SECONDS
  shift 2
  [[ "$methods" == *" ${name%%-*} "* ]] || return 0
  [ -e "$out/.done/$name" ] && return
  echo "== $name: $*" >&2
  "$@" > "$output"
  echo "$name $((SECONDS - start)) $(date +%Y-%m-%d)" >> "$out/times.txt"
  touch "$out/.done/$name"
}
search() { # search NAME SECONDS FLAGS...: a search into OUT/NAME (a run cut short by an earlier call starts
  # again, so that its wall time is one run's), then its recipes
  local name=$1 seconds=$2
  shift 2
  if [[ "$methods" == *" $name "* ]] && [ ! -e "$out/.done/$name" ]; then rm -rf "${out:?}/$name"; fi
  timed "$name" "$out/$name.jsonl" $bin search "${common[@]}" "$@" --max-seconds "$seconds" --seed "$seed" --out "$out/$name" --json
  [ ! -e "$out/.done/$name" ] || [ -d "$out/$name/recipes" ] || $bin front "$out/$name" --recipes "$out/$name/recipes" > /dev/null
}

# the tool's recommendation: a default search, every front solution validated on held-out text
search gelaco "$search_seconds"
# the paper's method as published
search paper "$paper_seconds" --objective similarity --heal none --merge-op rdsc --init paper --fidelity full:1
# the baselines as published: no healing
timed shortgpt "$out/shortgpt.json" $bin baseline shortgpt "${common[@]}" --heal none --remove "$remove" --recipes "$out/recipes" --json
timed sleb "$out/sleb.json" $bin baseline sleb "${common[@]}" --objective nll --heal none --remove "$remove" --recipes "$out/recipes" --json
# EvoPress is one search per size, run and kept one size at a time (10 to 12 minutes a size,
# 44 for the four sizes here: a call can do part of them); a size's search is the same alone
for r in $evopress_sizes; do
  timed "evopress-$r" "$out/evopress-$r.json" $bin baseline evopress "${common[@]}" --objective kl --heal none --remove "$r" \
    --generations "$evopress_generations" --seed "$seed" --recipes "$out/recipes" --json
done
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
for t in $laco_thresholds; do
  timed "laco-$t" "$out/laco/t$t.json" $bin baseline laco "${common[@]}" --merge-op keep-first --threshold "$t" --json
done

# which model stands for each method at each size: a recipe, merges (LaCo), or none yet
layers=$($bin inspect --model "$model" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["layers"])')
python3 - "$out" "$sizes" "$layers" "$laco_thresholds" <<'EOF'
import json, os, sys
out, sizes, layers = sys.argv[1], [int(s) for s in sys.argv[2].split()], int(sys.argv[3])
done = lambda name: os.path.exists(os.path.join(out, ".done", name))
# LaCo's plan at a size is the nearest of the whole sweep, so it stands only once every threshold is done
thresholds = sys.argv[4].split()
laco = [json.load(open(os.path.join(out, "laco", "t%s.json" % t))) for t in thresholds] \
    if all(done("laco-" + t) for t in thresholds) else []
picks = []
for r in sizes:
    keep = layers - r
    for key, method, pattern in [
            ("gelaco", "GeLaCo (recommended)", "gelaco/recipes/recommended-%dlayers.json"),
            ("paper", "GeLaCo (paper)", "paper/recipes/recommended-%dlayers.json"),
            ("shortgpt", "ShortGPT", "recipes/shortgpt-%dlayers.json"),
            ("shortgpt-healed", "ShortGPT", "recipes/shortgpt-%dlayers-healed.json"),
            ("sleb", "SLEB", "recipes/sleb-%dlayers.json"),
            ("evopress", "EvoPress", "recipes/evopress-%dlayers.json")]:
        pick = {"removed": r, "key": key, "method": method, "time": key}
        path = os.path.join(out, pattern % keep)
        if key == "evopress" and not done(key):
            # one search per size (an earlier version of this script ran them in one call)
            key = pick["time"] = "evopress-%d" % r
        if not done(key):
            pick["missing"] = "not run yet"
        elif os.path.exists(path):
            pick["recipe"] = path
        else:
            pick["missing"] = "no plan of this size"
        picks.append(pick)
    pick = {"removed": r, "key": "laco", "method": "LaCo (keep-first)", "time": "laco"}
    near = sorted(laco, key=lambda s: (abs(s["remaining_layers"] - keep), -s["fitness"]))
    if not laco:
        pick["missing"] = "not run yet"
    elif near[0]["merges"]:
        pick["merges"] = near[0]["merges"]
    else:
        pick["missing"] = "no plan of this size"
    picks.append(pick)
json.dump(picks, open(os.path.join(out, "picks.json"), "w"), indent=1)
EOF

tasks=()
if [ "$limit" -gt 0 ]; then
  tasks=(--task arc_easy="$data/arc/ARC-Easy-Test.jsonl" --task piqa="$data/piqa/dev.jsonl"
    --task hellaswag="$data/hellaswag/hellaswag_val_full.txt" --limit "$limit")
fi
# one file a model and setting: OUT/eval/limit-LIMIT/NAME.json (NAME: original, or METHOD-REMOVED)
evals="$out/eval/limit-$limit"
evaluate() { # evaluate NAME VARIANT-ARGS...: one model's test perplexity and tasks, once
  local name=$1 start=$SECONDS
  shift
  [ -s "$evals/$name.json" ] && return
  echo "== evaluate $name" >&2
  $bin eval --model "$model" "$@" "${tasks[@]}" --perplexity "$test_text" --max-windows 8 --device "$device" --json \
    > "$evals/$name.json.part"
  mv "$evals/$name.json.part" "$evals/$name.json"
  echo "eval-$name $((SECONDS - start)) $(date +%Y-%m-%d)" >> "$out/times.txt"
}
if [ "${EVALUATE:-1}" = 1 ]; then
  mkdir -p "$evals"
  evaluate original
  while IFS=$'\t' read -r name kind value; do
    case $kind in
      recipe) evaluate "$name" --recipe "$value" --no-original ;;
      merges) evaluate "$name" --merges "$value" --merge-op keep-first --no-original ;;
    esac
  done < <(python3 -c '
import json, sys
for p in json.load(open(sys.argv[1])):
    name = "%s-%d" % (p["key"], p["removed"])
    if "recipe" in p:
        print(name + "\trecipe\t" + p["recipe"])
    elif "merges" in p:
        print(name + "\tmerges\t" + p["merges"])' "$out/picks.json")
fi

python3 - "$out" "$limit" "$samples" <<'EOF'
import json, os, sys
out, limit, samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
evals = os.path.join(out, "eval", "limit-%d" % limit)
picks = json.load(open(os.path.join(out, "picks.json")))
times, days = {}, {}
for line in open(os.path.join(out, "times.txt")):
    # a method run again (its .done marker removed) replaces its earlier time
    name, s, *day = line.split()
    times[name] = int(s)
    days[name] = day[0] if day else ""
times["laco"] = sum(v for k, v in times.items() if k.startswith("laco-")) if any(k.startswith("laco-") for k in times) else None
def load(name):
    p = os.path.join(evals, name + ".json")
    return json.load(open(p))["models"][0] if os.path.exists(p) else None
original = load("original")
task_names = [t["task"] for t in original["tasks"]] if original else []
def cells(m):
    c = ["%.2f" % m["perplexity"]["perplexity"]]
    for t in m["tasks"]:
        c.append("%.1f±%.1f" % (100 * t["acc_norm"], 100 * t["acc_norm_stderr"]))
    return c
blank = " |" * (1 + len(task_names))
columns = ["removed", "method", "merges", "layers", "test ppl"] + task_names + ["wall time"]
rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
rows.append("| 0 | original | | %d | %s | |" % (original["layers"], " | ".join(cells(original))) if original else
            "| 0 | original | (not evaluated yet) | |%s |" % blank)
for p in picks:
    t = times.get(p["time"])
    wall = "%d s" % t if t is not None else ""
    if "missing" in p:
        rows.append("| %d | %s | (%s) | |%s %s |" % (p["removed"], p["method"], p["missing"], blank, wall))
        continue
    healed = ""
    recipe = json.load(open(p["recipe"])) if "recipe" in p else {}
    if recipe.get("heal") and recipe["heal"].get("method", "none") != "none":
        healed = " (healed)"
    if p["method"].startswith("GeLaCo") and " baseline " in recipe.get("origin", ""):
        # validation picked one of the run's own baselines at this size
        healed += " = " + recipe["origin"].split(" baseline ", 1)[1]
    m = load("%s-%d" % (p["key"], p["removed"]))
    if m is None:
        merges = p.get("merges") or recipe.get("merges", "")
        rows.append("| %d | %s%s | %s (not evaluated yet) | |%s %s |" % (p["removed"], p["method"], healed, merges, blank, wall))
        continue
    rows.append("| %d | %s%s | %s | %d | %s | %s |" % (p["removed"], p["method"], healed, m["merges"], m["layers"],
                                                    " | ".join(cells(m)), wall))
ran = sorted(set(d for d in days.values() if d))
head = ("Demo model; calibration: %d samples of 128 tokens of WikiText-2 validation; test ppl: first 8 windows "
        "of 512 tokens of WikiText-2 test; tasks: first %d items each, acc_norm in %% ± standard error; wall time: "
        "the method's whole run on this machine (one run gives every size, but EvoPress: its search at that size; run on %s)." % (samples, limit, ", ".join(ran) or "-"))
text = head + "\n\n" + "\n".join(rows) + "\n"
open(os.path.join(out, "quality.md"), "w").write(text)
print(text)
EOF
