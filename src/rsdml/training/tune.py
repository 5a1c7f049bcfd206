"""``rsdml tune``: choose hyper-parameters on the labelled images alone.

The grid file is an experiment grid (``base:`` + ``grid:``). Every cell (a candidate) is
trained K times, each time with one fold of the *labelled* images held out as the test set
and the other folds as the labelled set; the candidate with the best mean held-out kNN
accuracy wins and is written as ``OUT/best.yaml`` (a ``rsdml train --config`` file).

What a fold run may see, by construction (:func:`fold_split`):

* labels: only those of the labelled images of the cell's split;
* pixels: the labelled images and the split's unlabelled pool (under the transductive
  protocol the test images' pixels, which training is allowed to use; under the inductive
  protocol the unlabelled images only: validation and test images are left out entirely).

The labels of the pool are replaced by a constant before anything is written, so nothing
downstream can read them. In the transductive protocol the inductive validation images *are*
test images, which is why choosing on them (as docs/results.md once did) is not allowed.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rsdml.data.split import Split, read_split_csv, write_split_csv
from rsdml.errors import RsdmlError
from rsdml.training import experiment as ex

log = logging.getLogger(__name__)


def fold_split(split: Split, folds: int, fold: int, seed: int, holdout: float = 0.25) -> Split:
    """The split of one fold: held-out labelled images -> ``test``, the other labelled images
    -> ``labeled``, the unlabelled pool -> ``unlabeled`` (label 0), everything else dropped.

    ``folds >= 2``: stratified K-fold over each class's labelled images (seeded); ``folds ==
    1``: one held-out part of ``holdout`` of each class. A class with one labelled image keeps
    it for training in every fold.
    """
    if folds < 1 or not 0 <= fold < folds:
        raise ValueError(f"fold {fold} of {folds}")
    labeled = split.index("labeled")
    pool = split.unlabeled_index()
    rng = np.random.default_rng([seed, 7919])
    held = []
    for c in range(split.num_classes):
        idx = labeled[split.labels[labeled] == c]
        if len(idx) < 2:
            continue
        idx = idx[rng.permutation(len(idx))]
        if folds == 1:
            n = min(len(idx) - 1, max(1, int(math.floor(holdout * len(idx) + 0.5))))
            held.append(idx[:n])
        else:
            held.append(idx[np.arange(len(idx)) % folds == fold])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    if len(held_idx) == 0:
        raise RsdmlError("too few labelled images to hold any out (need >= 2 in some class); "
                         "raise --labeled-fraction")
    train_idx = np.setdiff1d(labeled, held_idx)
    keep = np.sort(np.concatenate([train_idx, held_idx, pool]))
    roles = np.full(len(split.paths), "", dtype=object)
    roles[train_idx], roles[held_idx], roles[pool] = "labeled", "test", "unlabeled"
    labels = split.labels.copy()
    labels[pool] = 0  # the pool's labels never leave this function
    return Split("inductive", list(split.classes), [split.paths[i] for i in keep],
                 labels[keep], roles[keep].astype(str))


@dataclass(frozen=True)
class TuneResult:
    rows: list[dict[str, Any]]  # one per candidate: its grid values, mean and per-fold accuracy
    best: dict[str, Any]
    best_config: Path
    table: Path


def run_tune(grid_path: str | Path, out_dir: str | Path, *, folds: int = 3, holdout: float = 0.25,
             overrides: dict[str, Any] | None = None,
             echo: Callable[[str], None] | None = None) -> TuneResult:
    """Train every candidate on every fold (resumable like ``rsdml experiment``); pick the best
    by mean held-out kNN accuracy (ties: the earlier candidate in the grid)."""
    say = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    if folds < 1:
        raise RsdmlError(f"--folds {folds} must be >= 1 (1 = one held-out part, see --holdout)")
    if not 0 < holdout < 1:
        raise RsdmlError(f"--holdout {holdout} must be in (0, 1), e.g. 0.25")
    grid = ex.load_grid(grid_path)
    out = Path(out_dir).absolute()
    cells = ex.plan_cells(grid, out, overrides)
    out.mkdir(parents=True, exist_ok=True)
    ex.prepare_splits(cells, quiet=bool((overrides or {}).get("quiet")))
    runs: list[tuple[ex.Cell, int, ex.Cell]] = []
    for cell in cells:
        for k in range(folds):
            split_path = cell.split_path.with_name(f"{cell.split_path.stem}-fold{k + 1}of{folds}.csv")
            if not split_path.is_file():
                base = read_split_csv(cell.split_path)
                write_split_csv(fold_split(base, folds, k, cell.config.seed, holdout), split_path)
            run_dir = cell.run_dir / f"fold{k + 1}of{folds}"
            cfg = cell.config.replace(out=str(run_dir), split=str(split_path), protocol="inductive",
                                      eval_every=cell.config.epochs, report=False)
            runs.append((cell, k, replace(cell, config=cfg, run_dir=run_dir, split_path=split_path)))
    accs: dict[int, list[float]] = {c.index: [] for c in cells}
    t0 = time.monotonic()
    for i, (cell, k, run) in enumerate(runs, start=1):
        head = f"[tune {i}/{len(runs)}] {cell.label} fold {k + 1}/{folds}"
        state = run.state()
        if state != "done":
            say(f"{head} — elapsed {ex._duration(time.monotonic() - t0)}")
            if state == "resume":
                ex.train(ex.TrainConfig(), resume=run.run_dir, overrides={})
            else:
                if state == "restart":
                    ex._remove_unfinished(run.run_dir)
                ex.train(run.config)
        accs[cell.index].append(_held_out_accuracy(run.run_dir))
    rows = []
    for cell in cells:
        a = accs[cell.index]
        rows.append({**cell.values, "heldout_knn_acc": float(np.mean(a)),
                     "heldout_std": float(np.std(a, ddof=1)) if len(a) > 1 else 0.0,
                     "folds": [round(x, 4) for x in a]})
    best_i = max(range(len(rows)), key=lambda i: (rows[i]["heldout_knn_acc"], -i))
    best = rows[best_i]
    chosen = cells[best_i].config.to_dict()
    for key in ("out", "split"):
        chosen.pop(key, None)
    best_path = out / "best.yaml"
    best_path.write_text(
        "# Chosen by `rsdml tune` on held-out labelled images only (mean held-out kNN accuracy "
        f"{best['heldout_knn_acc']:.4f} over {folds} fold(s)).\n"
        + yaml.safe_dump(chosen, sort_keys=False))
    table = out / "tune.md"
    table.write_text(_table(rows, grid.columns, folds))
    (out / "tune.json").write_text(json.dumps({"folds": folds, "rows": rows, "best": best},
                                              indent=2) + "\n")
    say(f"best: {cells[best_i].label} (held-out kNN {best['heldout_knn_acc']:.4f}); "
        f"config: {best_path}")
    return TuneResult(rows, best, best_path, table)


def _held_out_accuracy(run_dir: Path) -> float:
    """The last evaluation's kNN accuracy of the held-out labelled images (the fold's test)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    evals = [r for r in rows if "knn_acc" in r]
    if not evals:
        raise RsdmlError(f"{run_dir}/metrics.jsonl has no evaluation; delete the folder to rerun it")
    return float(evals[-1]["knn_acc"])


def _table(rows: list[dict[str, Any]], columns: list[str], folds: int) -> str:
    head = [*columns, "held-out kNN acc", "per fold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = max(r["heldout_knn_acc"] for r in rows)
    for r in rows:
        acc = f"{r['heldout_knn_acc']:.4f} ± {r['heldout_std']:.4f}"
        if r["heldout_knn_acc"] == best:
            acc = f"**{acc}**"
        lines.append("| " + " | ".join([*(str(r[c]) for c in columns), acc,
                                         ", ".join(f"{x:.4f}" for x in r["folds"])]) + " |")
    return (f"Held-out kNN accuracy (K=10) on labelled images only, {folds} fold(s); "
            "mean ± sample std over folds.\n\n" + "\n".join(lines) + "\n")
