"""An experiment's ``results.csv`` (one row a run) -> ``results.md`` (mean ± std over seeds,
the best of each column in bold) and ``results.png`` (kNN accuracy and mAP@20 against the
labelled fraction, one line per method).

Everything is computed from the CSV alone, so a table can be remade (or made from a CSV
edited by hand) without the run folders. Columns that are TrainConfig option names (method,
labeled_fraction, seed, any other swept option) say what a run was; the other numeric
columns are metrics.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsdml.config import TrainConfig
from rsdml.errors import RsdmlError

#: Metrics where a smaller value is better (everything else: larger is better).
LOWER_IS_BETTER = frozenset({"anmrr", "archive_anmrr"})
#: The columns of results.md, in this order, where present (results.csv keeps every metric).
TABLE_METRICS = (
    "knn_acc", "macro_f1", "cluster_acc", "nmi", "ari", "map", "map_at_20", "map_at_r",
    "r_precision", "anmrr",
)
#: The panels of results.png.
PLOT_METRICS = (("knn_acc", "kNN accuracy (k = 10)"), ("map_at_20", "mAP@20"))
SEED = "seed"
FRACTION = "labeled_fraction"
EXTRA_COLUMNS = ("wall_seconds", "run")  # per-run bookkeeping, neither key nor metric
DIGITS = 3


@dataclass
class Results:
    """The parsed results.csv."""

    rows: list[dict[str, Any]]
    key_columns: list[str]  # TrainConfig options in the CSV (method, labeled_fraction, seed, ...)
    metric_columns: list[str]

    @property
    def group_columns(self) -> list[str]:
        """What identifies a table row: every key but the seed and the fraction."""
        return [k for k in self.key_columns if k not in (SEED, FRACTION)]


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std (ddof=1); 0 when only one value
    n: int  # values that are not NaN


@dataclass
class Summary:
    """One method (and other swept values) at one labelled fraction, over its seeds."""

    fraction: float
    keys: dict[str, Any]  # group column -> value (method first)
    n: int  # runs (seeds)
    stats: dict[str, Stat] = field(default_factory=dict)
    wall_seconds: float = math.nan  # mean over the runs that recorded one

    @property
    def label(self) -> str:
        method = str(self.keys.get("method", ""))
        rest = [f"{k}={v}" for k, v in self.keys.items() if k != "method"]
        return " ".join([method, *rest]).strip()


# --------------------------------------------------------------------------- CSV
def write_results_csv(rows: Sequence[dict[str, Any]], key_columns: Sequence[str],
                      path: str | Path) -> None:
    """Keys first, then every metric (first-seen order), then wall_seconds and run; atomic."""
    metrics: list[str] = []
    for row in rows:
        for k in row:
            if k not in key_columns and k not in EXTRA_COLUMNS and k not in metrics:
                metrics.append(k)
    header = [*key_columns, *metrics, *EXTRA_COLUMNS]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow([_cell_text(row.get(k)) for k in header])
    tmp.replace(path)


def _cell_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def read_results(path: str | Path) -> Results:
    path = Path(path)
    if not path.is_file():
        raise RsdmlError(f"{path} does not exist; run `rsdml experiment GRID.yaml --out DIR` first")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        raw = list(reader)
    options = set(TrainConfig.field_names())
    keys = [c for c in header if c in options]
    if "method" not in keys or FRACTION not in keys:
        raise RsdmlError(
            f"{path} needs the columns method and {FRACTION} (found {', '.join(header) or 'none'})"
        )
    metrics = [c for c in header if c not in options and c not in EXTRA_COLUMNS]
    rows = []
    for line, r in enumerate(raw, start=2):
        row: dict[str, Any] = {k: r[k] for k in keys}
        try:
            row[FRACTION] = float(r[FRACTION])
        except ValueError:
            raise RsdmlError(
                f"{path} line {line}: {FRACTION} {r[FRACTION]!r} is not a number"
            ) from None
        for c in (*metrics, "wall_seconds"):
            row[c] = _number(r.get(c))
        if "run" in r:
            row["run"] = r["run"]
        rows.append(row)
    return Results(rows, keys, metrics)


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


# --------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> Stat:
    """Mean and sample std (ddof=1) of the values that are not NaN; std 0 for one value."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return Stat(math.nan, math.nan, 0)
    return Stat(float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0, len(x))


def summarize(results: Results) -> list[Summary]:
    """One Summary per (fraction, method, other keys): sorted by fraction, then first-seen order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in results.rows:
        key = (row[FRACTION], *(row[k] for k in results.group_columns))
        groups.setdefault(key, []).append(row)
    out = []
    for key, rows in groups.items():
        s = Summary(
            fraction=key[0], keys=dict(zip(results.group_columns, key[1:])), n=len(rows),
            stats={m: mean_std([r[m] for r in rows]) for m in results.metric_columns},
        )
        s.wall_seconds = mean_std([r.get("wall_seconds", math.nan) for r in rows]).mean
        out.append(s)
    return sorted(out, key=lambda s: s.fraction)  # stable: first-seen order within a fraction


def best_rows(summaries: Sequence[Summary], metric: str, digits: int = DIGITS) -> set[int]:
    """Indices of the best mean (ties at the shown precision all count); empty for < 2 values."""
    means = [(i, round(s.stats[metric].mean, digits)) for i, s in enumerate(summaries)
             if metric in s.stats and not math.isnan(s.stats[metric].mean)]
    if len(means) < 2:
        return set()
    pick = min if metric in LOWER_IS_BETTER else max
    target = pick(m for _, m in means)
    return {i for i, m in means if m == target}


# --------------------------------------------------------------------------- markdown
def render_markdown(summaries: Sequence[Summary], metrics: Sequence[str] | None = None,
                    title: str = "Results") -> str:
    """One table per labelled fraction: rows = methods, columns = n, metrics, seconds per run."""
    if metrics is None:
        present = {m for s in summaries for m in s.stats}
        metrics = [m for m in TABLE_METRICS if m in present]
    lines = [
        f"# {title}", "",
        "Mean ± sample standard deviation (ddof = 1) over seeds; n = number of seeds (std is "
        "0 when n = 1). **Bold**: the best mean of the column within a labelled fraction "
        "(↓: lower is better). Every run's numbers are in results.csv.", "",
    ]
    if not summaries:
        lines.append("No finished runs yet.")
        return "\n".join(lines) + "\n"
    group_cols = list(summaries[0].keys)
    fractions = sorted({s.fraction for s in summaries})
    for frac in fractions:
        rows = [s for s in summaries if s.fraction == frac]
        best = {m: best_rows(rows, m) for m in metrics}
        head = [*group_cols, "n", *(f"{m} ↓" if m in LOWER_IS_BETTER else m for m in metrics),
                "s/run"]
        align = [":--"] * len(group_cols) + ["--:"] * (len(head) - len(group_cols))
        lines += [f"## Labelled fraction {frac:g}", "",
                  "| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
        for i, s in enumerate(rows):
            cells = [str(s.keys[c]) for c in group_cols] + [str(s.n)]
            for m in metrics:
                st = s.stats.get(m)
                if st is None or math.isnan(st.mean):
                    cells.append("—")
                    continue
                text = f"{st.mean:.{DIGITS}f} ± {st.std:.{DIGITS}f}"
                cells.append(f"**{text}**" if i in best[m] else text)
            cells.append("—" if math.isnan(s.wall_seconds) else f"{s.wall_seconds:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot
def plot_results(summaries: Sequence[Summary], path: str | Path) -> None:
    """kNN accuracy and mAP@20 (mean ± std over seeds) against the labelled fraction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(m, t) for m, t in PLOT_METRICS if any(m in s.stats for s in summaries)]
    fig = Figure(figsize=(5.2 * max(1, len(panels)), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    labels = list(dict.fromkeys(s.label for s in summaries))
    fractions = sorted({s.fraction for s in summaries})
    for j, (metric, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for label in labels:
            pts = sorted((s.fraction, s.stats[metric]) for s in summaries
                         if s.label == label and metric in s.stats
                         and not math.isnan(s.stats[metric].mean))
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.errorbar(x, [p[1].mean for p in pts], yerr=[p[1].std for p in pts], marker="o",
                        capsize=3, label=label)
        if len(fractions) > 1 and min(fractions) > 0 and max(fractions) / min(fractions) >= 3:
            ax.set_xscale("log")
        ax.set_xticks(fractions)
        ax.set_xticklabels([f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("labelled fraction")
        ax.set_ylabel(title)
        ax.set_title(f"{title} (mean ± std over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        if j == 0 and labels:
            ax.legend(fontsize=8)
    if not panels:
        fig.text(0.5, 0.5, "no kNN accuracy or mAP@20 in results.csv yet", ha="center")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- all at once
def aggregate(csv_path: str | Path, md_path: str | Path | None = None,
              png_path: str | Path | None = None) -> list[Summary]:
    """Read results.csv; write results.md and results.png where paths are given."""
    summaries = summarize(read_results(csv_path))
    if md_path is not None:
        md = Path(md_path)
        tmp = md.with_name(md.name + ".tmp")
        tmp.write_text(render_markdown(summaries), encoding="utf-8")
        tmp.replace(md)
    if png_path is not None:
        plot_results(summaries, png_path)
    return summaries
