#!/usr/bin/env python3
"""Plot a run folder: every evaluated plan, the final front and the baselines.

    python3 scripts/plot_front.py RUN_DIR OUT.png

Needs matplotlib (only for this figure; the tool itself does not).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    run, out = sys.argv[1], sys.argv[2]
    evals = [json.loads(line) for line in open(f"{run}/evaluations.jsonl")]
    front = json.load(open(f"{run}/front.json"))
    try:
        baselines = json.load(open(f"{run}/baselines.json"))
    except FileNotFoundError:
        baselines = []
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=120)
    pts = [(e["result"]["compression"], e["result"]["fitness"], e["generation"]) for e in evals if not e["cached"]]
    sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=[p[2] for p in pts], cmap="viridis", s=10, alpha=0.5, label="evaluated plans")
    fig.colorbar(sc, ax=ax, label="generation")
    f = sorted(front, key=lambda e: e["compression"])
    ax.step([e["compression"] for e in f], [e["fitness"] for e in f], where="pre", color="crimson", lw=2, label="GeLaCo front")
    ax.scatter([e["compression"] for e in f], [e["fitness"] for e in f], color="crimson", s=24, zorder=3)
    for name, marker, color in [("ShortGPT", "s", "black"), ("LaCo", "^", "darkorange")]:
        b = [x for x in baselines if x["method"].startswith(name)]
        if b:
            ax.scatter([x["result"]["compression"] for x in b], [x["result"]["fitness"] for x in b], marker=marker, s=60, color=color, zorder=4, label=name)
    ax.set_xlabel("compression (share of layers removed)")
    ax.set_ylabel("fitness (module-wise similarity)")
    ax.set_xlim(-0.02, 0.72)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("SmolLM2-135M: GeLaCo front against LaCo and ShortGPT")
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main()
