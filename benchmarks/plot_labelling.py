"""The labelling-curve figure and table of docs/results.md from bench_labelling.py's rows.

    python benchmarks/plot_labelling.py /tmp/labelling/rows.jsonl [more rows.jsonl ...] \
        --png docs/results_labelling.png [--score predict|knn1|knn]

Prints the Markdown table (each seed, the mean, and the mean difference to random over the
seeds both arms have). ``--score``: ``predict`` (default: the class ``rsdml predict`` gives, what
a user of the loop gets), ``knn1`` or ``knn`` (kNN with K = 1 / K = 10 against the labelled
images). Several row files: the arms of different runs of the benchmark, in one figure."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

#: What each score is, in the table and on the axis.
SCORES = {"predict": "rsdml predict's accuracy", "knn1": "kNN accuracy (K=1)",
          "knn": "kNN accuracy (K=10)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rows", type=Path, nargs="+")
    ap.add_argument("--png", type=Path, required=True)
    ap.add_argument("--score", choices=tuple(SCORES), default="predict")
    args = ap.parse_args()
    score = args.score
    rows = [json.loads(line) for f in args.rows for line in f.read_text().splitlines()
            if line.strip()]
    acc: dict[tuple[str, float], dict[int, dict]] = defaultdict(dict)
    for r in rows:
        acc[(r["arm"], r["per_class"])][r["seed"]] = r
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    budgets = sorted({r["per_class"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})

    def mean(arm: str, b: float, key: str = score) -> float:
        return float(np.mean([v[key] for v in acc[(arm, b)].values()]))

    head = "| labels / class | arm | " + " | ".join(f"seed {s}" for s in seeds) + \
        f" | mean | vs random (same seeds) | classes covered | {SCORES[score]}, pretrained trunk (mean) |"
    print(head)
    print("|" + " --- |" * 2 + " --: |" * (len(seeds) + 4))
    for b in budgets:
        for arm in arms:
            if not acc[(arm, b)]:
                continue
            cells = [f"{acc[(arm, b)][s][score]:.3f}" if s in acc[(arm, b)] else "" for s in seeds]
            both = sorted(set(acc[(arm, b)]) & set(acc[("random", b)]))  # paired by seed
            gap = [acc[(arm, b)][s][score] - acc[("random", b)][s][score] for s in both]
            plural = "s" if len(both) > 1 else ""
            diff = "" if arm == "random" or not both else \
                f"{100 * np.mean(gap):+.1f} pts ({len(both)} seed{plural})"
            print(f"| {b:g} | {arm} | " + " | ".join(cells) + f" | **{mean(arm, b):.3f}** | "
                  f"{diff} | {mean(arm, b, 'classes_covered'):.1f} | {mean(arm, b, score + '_trunk'):.3f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for arm in arms:
        bs = [b for b in budgets if acc[(arm, b)]]
        ax.plot(bs, [mean(arm, b) for b in bs], marker="o", label=arm)
        for b in bs:
            ax.scatter([b] * len(acc[(arm, b)]), [v[score] for v in acc[(arm, b)].values()],
                       s=8, alpha=0.5, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("labels per class (x 30 classes, chosen by the arm)")
    ax.set_ylabel(f"{SCORES[score]} on the unlabelled images")
    ax.set_title("AID, fast mode (lines: mean of seeds; dots: each seed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png)


if __name__ == "__main__":
    main()
