"""``rsdml experiment``: a grid of training runs (methods x labelled fractions x seeds x ...).

A grid file has two keys: ``base`` (TrainConfig values shared by every run) and ``grid``
(TrainConfig keys with a list of values each); every combination is one *cell*, one run
folder ``OUT/runs/<method>/frac<f>/seed<s>[/<key>=<value>...]``. Why the design:

* All cells of one (data, protocol, labelled fraction, seed, val/test fractions) read the same
  split file ``OUT/splits/<...>.csv``, so methods are compared on identical images.
* The grid is resumable: a cell with ``final_metrics.json`` is skipped, one with a checkpoint is
  resumed, one killed before its first checkpoint starts again. Rerunning the same command after
  a crash, or with more seeds added, only runs what is missing.
* After each cell ``results.csv``, ``results.md`` and ``results.png`` are rewritten, so partial
  results are readable while a long grid runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsdml.config import TrainConfig, convert_value, load_yaml, option_name
from rsdml.errors import RsdmlError
from rsdml.fsutil import write_json
from rsdml.progress import duration
from rsdml.training.cells import (
    RESERVED_KEYS,
    RUNTIME_KEYS,
    Cell,
    check_same_config,
    is_interrupt,
    run_cell,
    text,
)

log = logging.getLogger(__name__)

#: Keys that every cell has a value for (from the grid, the base, or the TrainConfig default).
CELL_KEYS = ("method", "labeled_fraction", "seed")
#: Values of final_metrics.json that are not metrics.
NON_METRIC_KEYS = frozenset({"checkpoint", "epoch", "wall_seconds"})
CELL_FILE = "cell.json"  # written into a run folder by the experiment once the cell is finished


# --------------------------------------------------------------------------- the grid file
@dataclass(frozen=True)
class Grid:
    """A parsed grid file: shared values and the axes to sweep (values already type-checked)."""

    base: dict[str, Any]
    axes: dict[str, list[Any]]  # key -> values, in the order the grid file lists them
    source: str = "grid"

    @property
    def other_keys(self) -> list[str]:
        """Swept keys besides method, labelled fraction and seed (their own run-folder level)."""
        return [k for k in self.axes if k not in CELL_KEYS]

    @property
    def columns(self) -> list[str]:
        """The keys that name a cell: method, labeled_fraction, seed, then the other swept keys."""
        return [*CELL_KEYS, *self.other_keys]


def load_grid(path: str | Path) -> Grid:
    return parse_grid(load_yaml(path), source=str(path))


def parse_grid(values: dict[str, Any], source: str = "grid") -> Grid:
    """Check the structure and every key and value type of a grid (not yet the whole configs)."""
    unknown_top = sorted(str(k) for k in values if k not in ("base", "grid"))
    if unknown_top:
        raise RsdmlError(
            f"{source}: unknown top-level key(s) {', '.join(unknown_top)}; a grid file has only "
            "`base:` (shared options) and `grid:` (options with a list of values)"
        )
    base_raw = values.get("base") or {}
    grid_raw = values.get("grid") or {}
    for name, part in (("base", base_raw), ("grid", grid_raw)):
        if not isinstance(part, dict):
            raise RsdmlError(f"{source}: `{name}:` must be a mapping of option: value")
    params = _param_classes()
    base = _names(base_raw, f"{source}: base", params)
    grid = _names(grid_raw, f"{source}: grid", params)
    for name, part in (("base", base), ("grid", grid)):
        reserved = sorted(k for k in part if k in RESERVED_KEYS)
        if reserved:
            raise RsdmlError(
                f"{source}: `{name}:` may not set {', '.join(reserved)}; the experiment gives "
                "every run its own folder under --out and makes the shared splits itself"
            )
    both = sorted(set(base) & set(grid))
    if both:
        raise RsdmlError(
            f"{source}: {', '.join(both)} appear(s) in both `base:` and `grid:`; keep each key "
            "in one"
        )
    base = {k: convert_value(k, v, f"{source}: base {k}", params) for k, v in base.items()}
    axes: dict[str, list[Any]] = {}
    for k, raw in grid.items():
        seq = raw if isinstance(raw, list) else [raw]
        if not seq:
            raise RsdmlError(f"{source}: grid {k} is an empty list; give at least one value")
        vals = [convert_value(k, v, f"{source}: grid {k}", params) for v in seq]
        dupes = sorted({repr(v) for i, v in enumerate(vals) if v in vals[:i]})
        if dupes:
            raise RsdmlError(f"{source}: grid {k} lists {', '.join(dupes)} more than once")
        axes[k] = vals
    return Grid(base, axes, source)


def _param_classes() -> tuple[type, ...]:
    """The methods' parameter classes (their options may appear in a grid)."""
    from rsdml.training.methods.params import param_classes

    return param_classes()


def _names(part: dict[Any, Any], where: str, params: tuple[type, ...]) -> dict[str, Any]:
    """Keys as option names ('-' or '_'; unknown ones refused with the closest name)."""
    out: dict[str, Any] = {}
    for k, v in part.items():
        name = option_name(k, where, params)
        if name in out:
            raise RsdmlError(f"{where}: {k!r} repeats an option given above; keep one")
        out[name] = v
    return out


def expand_grid(grid: Grid) -> list[dict[str, Any]]:
    """The cells' grid values in run order: seed, then labelled fraction, then the other swept
    keys, then method changing fastest, so a full table over one seed appears first and all the
    methods of a split run back to back (one scan and feature cache for all of them)."""
    defaults = TrainConfig()

    def axis(k: str) -> list[Any]:
        return grid.axes[k] if k in grid.axes else [grid.base.get(k, defaults.value(k))]

    order = ["seed", "labeled_fraction", *grid.other_keys, "method"]
    cells = []
    for combo in itertools.product(*(axis(k) for k in order)):
        values = dict(zip(order, combo))
        cells.append({k: values[k] for k in grid.columns})
    return cells


# --------------------------------------------------------------------------- cells
def plan_cells(grid: Grid, out_dir: str | Path,
               overrides: dict[str, Any] | None = None) -> list[Cell]:
    """Every cell with a validated config; checks that run folders made earlier match the grid.

    ``overrides`` may only hold :data:`RUNTIME_KEYS` (e.g. device, quiet): they apply to every
    cell and cannot change results.
    """
    from rsdml.training.runner import validate_config

    params = _param_classes()
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - RUNTIME_KEYS)
    if bad:
        raise ValueError(f"only runtime options may be overridden, not {', '.join(bad)}")
    out = Path(out_dir).absolute()
    expanded = expand_grid(grid)
    data_slugs = _data_slugs(grid, expanded)
    cells: list[Cell] = []
    for i, values in enumerate(expanded, start=1):
        merged = {**grid.base, **values, **overrides}
        label = " ".join(f"{k}={text(v)}" for k, v in values.items())
        where = f"{grid.source}, cell {label}"
        if not merged.get("data"):
            raise RsdmlError(f"{grid.source}: no data folder; add `data: FOLDER` under `base:`")
        merged["data"] = _data_folder(merged["data"])
        try:
            probe = validate_config(TrainConfig.from_dict(merged, source=where, params=params))
        except RsdmlError as e:
            raise RsdmlError(f"{where}: {e}") from None
        run_dir = out / "runs" / _cell_folder(grid, values)
        split_path = out / "splits" / _split_name(probe, data_slugs[probe.data or ""])
        cfg = probe.replace(out=str(run_dir), split=str(split_path))
        cells.append(Cell(i, values, cfg, run_dir, split_path))
    for cell in cells:
        if cell.state() in ("done", "resume"):
            check_same_config(cell, grid.source, params)
    return cells


def _data_folder(value: Any) -> str:
    """A grid's ``data``: a folder, or a data set name (``ucmerced``) resolved to its
    downloaded copy, as ``rsdml train --data`` does; absolute either way."""
    from rsdml.data.datasets import resolve_data

    return str(Path(resolve_data(str(value)) or str(value)).expanduser().absolute())


def _slug(v: Any) -> str:
    """A folder-name-safe form of a value; a path becomes its name plus a short hash."""
    shown = text(v)
    if isinstance(v, str) and ("/" in shown or "\\" in shown):
        digest = hashlib.sha1(shown.encode()).hexdigest()[:6]
        shown = f"{Path(shown).name or 'root'}-{digest}"
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", shown)


def _cell_folder(grid: Grid, values: dict[str, Any]) -> Path:
    parts = [
        _slug(values["method"]), f"frac{_slug(values['labeled_fraction'])}",
        f"seed{_slug(values['seed'])}",
        *(f"{k}={_slug(values[k])}" for k in grid.other_keys),
    ]
    return Path(*parts)


def _data_slugs(grid: Grid, expanded: list[dict[str, Any]]) -> dict[str, str]:
    """Readable names of the data folders for split file names (a hash only where two clash)."""
    folders = sorted({_data_folder(v.get("data") or grid.base.get("data") or "")
                      for v in expanded})
    names = {f: re.sub(r"[^A-Za-z0-9._+-]", "_", Path(f).name or "data") for f in folders}
    clash = {n for n in names.values() if list(names.values()).count(n) > 1}
    return {
        f: (f"{n}-{hashlib.sha1(f.encode()).hexdigest()[:6]}" if n in clash else n)
        for f, n in names.items()
    }


def _split_name(cfg: TrainConfig, data_slug: str) -> str:
    """Every value the split depends on, readable (the scan also depends on --strict)."""
    name = f"{data_slug}-{cfg.protocol}-frac{text(cfg.labeled_fraction)}-seed{cfg.seed}"
    if cfg.protocol == "inductive":
        name += f"-val{text(cfg.val_fraction)}-test{text(cfg.test_fraction)}"
    if cfg.strict:
        name += "-strict"
    return name + ".csv"


# --------------------------------------------------------------------------- splits
def prepare_splits(cells: Iterable[Cell], quiet: bool = False) -> list[Path]:
    """Write the missing shared split files (one scan per data folder); returns those written."""
    from rsdml.data.scan import scan_image_folder
    from rsdml.data.split import make_split, write_split_csv

    scans: dict[tuple[str, bool, int], Any] = {}
    written: list[Path] = []
    for cell in cells:
        path, cfg = cell.split_path, cell.config
        if path.is_file() or cell.state() in ("done", "resume"):
            continue
        min_per_class = 2 if cfg.protocol == "inductive" else 1
        key = (cfg.data or "", cfg.strict, min_per_class)
        if key not in scans:
            scans[key] = scan_image_folder(cfg.data or "", strict=cfg.strict, progress=not quiet,
                                           min_per_class=min_per_class)
        scan = scans[key]
        split = make_split(scan.paths, scan.labels, scan.classes, protocol=cfg.protocol,
                           labeled_fraction=cfg.labeled_fraction, val_fraction=cfg.val_fraction,
                           test_fraction=cfg.test_fraction, seed=cfg.seed, data_root=scan.root)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_split_csv(split, path)
        written.append(path)
    return written


# --------------------------------------------------------------------------- running
def train(cfg: TrainConfig, resume: str | Path | None = None,
          overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trainer (imported on first use; tests replace this name with a fake)."""
    from rsdml.training.runner import train as run_train

    return run_train(cfg, resume=resume, overrides=overrides)


@dataclass
class ExperimentResult:
    rows: list[dict[str, Any]]  # one per finished cell, in run order (the results.csv rows)
    ran: int  # cells trained (or resumed) by this call
    skipped: int  # cells finished before this call
    failed: list[str]  # labels of cells that failed (only with keep_going)
    csv: Path
    markdown: Path
    plot: Path


def run_experiment(
    grid: Grid | str | Path,
    out_dir: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    keep_going: bool = False,
    echo: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Run every unfinished cell of ``grid`` one after another; write the results after each.

    A user error in a cell (e.g. a diverged loss) stops the grid, or with ``keep_going`` is
    logged and the grid goes on (the command then fails at the end, naming the failed cells).
    """
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    say = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RsdmlError(f"--out {out} is a file; choose a folder")
    cells = plan_cells(grid, out, overrides)  # every config validated before anything runs
    quiet = bool((overrides or {}).get("quiet", grid.base.get("quiet", False)))
    out.mkdir(parents=True, exist_ok=True)
    prepare_splits(cells, quiet=quiet)

    runtime = {k: v for k, v in (overrides or {}).items() if k in RUNTIME_KEYS}
    # Rows of every finished cell, new and old, so partial tables are complete at all times.
    rows_at = {c.index: _row(c, _read_json(c.run_dir / "final_metrics.json"),
                             _wall_seconds(c.run_dir), out)
               for c in cells if c.state() == "done"}
    skipped = len(rows_at)
    failed: list[str] = []
    durations: list[float] = []
    t0 = time.monotonic()
    n = len(cells)
    pending = n - skipped
    ran = 0
    paths = _result_paths(out)

    def rows() -> list[dict[str, Any]]:
        return [rows_at[i] for i in sorted(rows_at)]

    for cell in cells:
        head = f"[cell {cell.index}/{n}] {cell.label}"
        if cell.index in rows_at:
            say(f"{head} — finished earlier, skipped")
            continue
        state = cell.state()
        eta = duration(sum(durations) / len(durations) * pending, eta=True) if durations else "?"
        what = " (resuming)" if state == "resume" else ""
        say(f"{head}{what} — elapsed {duration(time.monotonic() - t0)}, ETA {eta}")
        start = time.monotonic()
        try:
            result = run_cell(cell, train, runtime)
        except RsdmlError as e:
            if is_interrupt(e):  # Ctrl-C / SIGTERM: stop the grid, keep-going or not
                stop = RsdmlError(f"interrupted in cell {cell.label} (a checkpoint was saved); run "
                                  "the same `rsdml experiment` command again to resume the grid")
                stop.exit_code = e.exit_code
                raise stop from None
            if not keep_going:
                raise
            log.warning("cell %s failed: %s; going on with the next cell", cell.label, e)
            failed.append(cell.label)
            pending -= 1
            continue
        seconds = time.monotonic() - start
        durations.append(seconds)
        pending -= 1
        ran += 1
        _write_json(cell.run_dir / CELL_FILE, {
            "cell": dict(cell.values), "wall_seconds": round(seconds, 1),
            "resumed": state == "resume",
        })
        rows_at[cell.index] = _row(cell, result, round(seconds, 1), out)
        write_results(rows(), grid.columns, out)
    if ran == 0:  # nothing ran: still (re)write the tables from the finished cells
        write_results(rows(), grid.columns, out)
    say(f"{len(rows_at)}/{n} cells finished in {out} (ran {ran}, skipped {skipped}); total "
        f"{duration(time.monotonic() - t0)}; table: {paths[1]}")
    if failed:
        raise RsdmlError(
            f"{len(failed)} cell(s) failed: {'; '.join(failed)}; see the warnings above, fix the "
            "cause and run the same command again (finished cells are kept)"
        )
    return ExperimentResult(rows(), ran, skipped, failed, *paths)


def _row(cell: Cell, metrics: dict[str, Any], wall: float | None, out: Path) -> dict[str, Any]:
    row: dict[str, Any] = dict(cell.values)
    for k, v in metrics.items():
        if k in NON_METRIC_KEYS or k in row:
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            row[k] = float(v)
        elif v is None:
            row[k] = math.nan
    row["wall_seconds"] = wall
    row["run"] = cell.run_dir.relative_to(out.absolute()).as_posix()
    return row


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RsdmlError(
            f"{path} is not readable JSON ({e}); delete it to run that cell again"
        ) from None
    if not isinstance(obj, dict):
        raise RsdmlError(f"{path} does not hold a JSON object; delete it to run that cell again")
    return obj


def _wall_seconds(run_dir: Path) -> float | None:
    path = run_dir / CELL_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("wall_seconds")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _write_json(path: Path, obj: Any) -> None:
    write_json(path, obj)  # atomic, with fsync


def _result_paths(out: Path) -> tuple[Path, Path, Path]:
    return out / "results.csv", out / "results.md", out / "results.png"


def write_results(rows: list[dict[str, Any]], columns: list[str], out_dir: str | Path) -> None:
    """results.csv (every run), then results.md and results.png made from it."""
    from rsdml.evaluation.aggregate import aggregate, plot_results, write_results_csv

    csv_path, md_path, png_path = _result_paths(Path(out_dir))
    write_results_csv(rows, columns, csv_path)
    summaries = aggregate(csv_path, md_path)
    try:
        plot_results(summaries, png_path)
    except Exception as e:  # the numbers are written; a plotting failure must not stop the grid
        log.warning("could not draw %s (%s: %s)", png_path, type(e).__name__, e)
