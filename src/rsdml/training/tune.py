"""``rsdml tune``: choose hyper-parameters on the labelled images alone.

The grid file is an experiment grid (``base:`` + ``grid:``). Every cell (a candidate) is
trained K times, each time with one fold of the *labelled* images held out as the test set
and the other folds as the labelled set; the candidate with the best mean held-out kNN
accuracy wins and is written as ``OUT/best.yaml`` (a ``rsdml train --config`` file).

A ``seed`` axis is averaged over, never chosen from (a lucky seed is not a setting), and
``labeled_fraction`` is refused as an axis (more labels always score higher). The runs go
through the cell runner ``rsdml experiment`` uses (:mod:`rsdml.training.cells`); a fold run's
folder carries a fingerprint of its result options and a ``--folds 1`` split names its
``--holdout``, so a changed grid, epoch count or hold-out trains new runs, never reuses stale
ones.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rsdml.data.split import Split, read_split_csv, write_split_csv
from rsdml.errors import RsdmlError
from rsdml.progress import duration
from rsdml.training import experiment as ex
from rsdml.training.cells import (
    RUNTIME_KEYS,
    Cell,
    check_same_config,
    fingerprint,
    run_cell,
    text,
)
from rsdml.training.methods.params import param_classes

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
    rows: list[dict[str, Any]]  # one per candidate: its grid values (seed aside), mean, per run
    best: dict[str, Any]
    best_config: Path
    table: Path


def fold_name(folds: int, fold: int, holdout: float) -> str:
    """``fold2of3``; with one held-out part its size too (``fold1of1-holdout0.25``), so
    another ``--holdout`` makes another split and other runs."""
    name = f"fold{fold + 1}of{folds}"
    return f"{name}-holdout{text(holdout)}" if folds == 1 else name


def fold_cells(cell: Cell, folds: int, holdout: float) -> list[Cell]:
    """The runs of one candidate, one per fold: the fold's split written once, the run folder
    named by the fold and a fingerprint of every result option (epochs, the grid's values,
    ...), so a changed grid trains new runs instead of reusing stale ones."""
    runs = []
    for k in range(folds):
        name = fold_name(folds, k, holdout)
        split_path = cell.split_path.with_name(f"{cell.split_path.stem}-{name}.csv")
        if not split_path.is_file():
            base = read_split_csv(cell.split_path)
            write_split_csv(fold_split(base, folds, k, cell.config.seed, holdout), split_path)
        cfg = cell.config.replace(split=str(split_path), protocol="inductive",
                                  eval_every=cell.config.epochs, report=False)
        run_dir = cell.run_dir / f"{name}-{fingerprint(cfg, split_path.name)}"
        runs.append(Cell(cell.index, cell.values, cfg.replace(out=str(run_dir)), run_dir,
                         split_path))
    return runs


def run_tune(grid_path: str | Path, out_dir: str | Path, *, folds: int = 3, holdout: float = 0.25,
             overrides: dict[str, Any] | None = None,
             echo: Callable[[str], None] | None = None) -> TuneResult:
    """Train every candidate on every fold (resumable like ``rsdml experiment``, through the
    same cell runner); pick the best by held-out kNN accuracy averaged over folds and seeds
    (ties: the earlier candidate in the grid)."""
    say = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    if folds < 1:
        raise RsdmlError(f"--folds {folds} must be >= 1 (1 = one held-out part, see --holdout)")
    if not 0 < holdout < 1:
        raise RsdmlError(f"--holdout {holdout} must be in (0, 1), e.g. 0.25")
    grid = ex.load_grid(grid_path)
    if "labeled_fraction" in grid.axes:
        raise RsdmlError(f"{grid.source}: labeled_fraction is not a hyper-parameter (more labels "
                         "always look better on held-out labelled images); set it under `base:` "
                         "and tune once per fraction")
    out = Path(out_dir).absolute()
    cells = ex.plan_cells(grid, out, overrides)
    out.mkdir(parents=True, exist_ok=True)
    ex.prepare_splits(cells, quiet=bool((overrides or {}).get("quiet")))
    runtime = {k: v for k, v in (overrides or {}).items() if k in RUNTIME_KEYS}
    params = param_classes()
    runs = [(cell, k, run) for cell in cells
            for k, run in enumerate(fold_cells(cell, folds, holdout))]
    for _, _, run in runs:
        if run.state() in ("done", "resume"):
            check_same_config(run, grid.source, params)
    accs: dict[int, list[float]] = {c.index: [] for c in cells}
    t0 = time.monotonic()
    for i, (cell, k, run) in enumerate(runs, start=1):
        if run.state() != "done":
            say(f"[tune {i}/{len(runs)}] {cell.label} fold {k + 1}/{folds} — elapsed "
                f"{duration(time.monotonic() - t0)}")
            run_cell(run, ex.train, runtime)
        accs[cell.index].append(_held_out_accuracy(run.run_dir))
    rows, groups = _candidates(cells, accs, grid.columns)
    best_i = max(range(len(rows)), key=lambda i: (rows[i]["heldout_knn_acc"], -i))
    best = rows[best_i]
    chosen = groups[best_i][0].config.to_dict()
    for key in ("out", "split"):
        chosen.pop(key, None)
    seeds = best["seeds"]
    if len(seeds) > 1:
        chosen.pop("seed", None)  # not a hyper-parameter: the score is the mean over seeds
    best_path = out / "best.yaml"
    best_path.write_text(
        "# Chosen by `rsdml tune` on held-out labelled images only (mean held-out kNN accuracy "
        f"{best['heldout_knn_acc']:.4f} over {folds} fold(s) x {len(seeds)} seed(s)).\n"
        + yaml.safe_dump(chosen, sort_keys=False))
    columns = [c for c in grid.columns if c != "seed"]
    table = out / "tune.md"
    table.write_text(_table(rows, columns, folds))
    (out / "tune.json").write_text(json.dumps({"folds": folds, "holdout": holdout if folds == 1
                                               else None, "rows": rows, "best": best},
                                              indent=2) + "\n")
    label = " ".join(f"{k}={text(best[k])}" for k in columns)
    say(f"best: {label} (held-out kNN {best['heldout_knn_acc']:.4f}); config: {best_path}")
    return TuneResult(rows, best, best_path, table)


def _candidates(cells: list[Cell], accs: dict[int, list[float]], columns: list[str]
                ) -> tuple[list[dict[str, Any]], list[list[Cell]]]:
    """One row per candidate (the grid values but the seed): the mean and sample std of the
    held-out accuracy over every fold of every seed, and the cells it averages."""
    groups: dict[tuple[Any, ...], list[Cell]] = {}
    for cell in cells:
        key = tuple((k, repr(cell.values[k])) for k in columns if k != "seed")
        groups.setdefault(key, []).append(cell)
    rows = []
    for members in groups.values():
        a = [x for c in members for x in accs[c.index]]
        rows.append({**{k: v for k, v in members[0].values.items() if k != "seed"},
                     "seeds": [c.values["seed"] for c in members],
                     "heldout_knn_acc": float(np.mean(a)),
                     "heldout_std": float(np.std(a, ddof=1)) if len(a) > 1 else 0.0,
                     "folds": [round(x, 4) for x in a]})
    return rows, list(groups.values())


def _held_out_accuracy(run_dir: Path) -> float:
    """The last evaluation's kNN accuracy of the held-out labelled images (the fold's test)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    evals = [r for r in rows if "knn_acc" in r]
    if not evals:
        raise RsdmlError(f"{run_dir}/metrics.jsonl has no evaluation; delete the folder to rerun it")
    return float(evals[-1]["knn_acc"])


def _table(rows: list[dict[str, Any]], columns: list[str], folds: int) -> str:
    head = [*columns, "seeds", "held-out kNN acc", "per fold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = max(r["heldout_knn_acc"] for r in rows)
    for r in rows:
        acc = f"{r['heldout_knn_acc']:.4f} ± {r['heldout_std']:.4f}"
        if r["heldout_knn_acc"] == best:
            acc = f"**{acc}**"
        seeds = ",".join(text(x) for x in r["seeds"])
        lines.append("| " + " | ".join([*(str(r[c]) for c in columns), seeds, acc,
                                         ", ".join(f"{x:.4f}" for x in r["folds"])]) + " |")
    return (f"Held-out kNN accuracy (K=10) on labelled images only, {folds} fold(s) per seed; "
            "mean ± sample std over every fold of every seed.\n\n" + "\n".join(lines) + "\n")
