"""One cell of a grid (``rsdml experiment``, ``rsdml tune``): its state, the check that a run
folder made earlier was made with the cell's options, and running it (new, resumed or started
again). Both commands go through :func:`run_cell`, so a rule fixed here holds for both.

Why: ``rsdml tune`` used to keep its own copy of this loop without the options check, and
reused fold runs trained with other epochs than the grid now gave.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsdml.config import RUNTIME_KEYS as CONFIG_RUNTIME_KEYS
from rsdml.config import TrainConfig
from rsdml.errors import RsdmlError
from rsdml.training.run_folder import RunFolder

#: Options that cannot change a run's numbers (``runtime=True`` on their fields): they may
#: differ between the grid and a run folder made earlier, and are passed on when an
#: interrupted cell resumes.
RUNTIME_KEYS = CONFIG_RUNTIME_KEYS
#: Keys a grid sets for each cell itself: its run folder and the shared split.
RESERVED_KEYS = frozenset({"out", "split"})

TrainFn = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its grid values, its full validated config and its folders."""

    index: int  # 1-based position in run order
    values: dict[str, Any]  # grid.columns -> value
    config: TrainConfig  # out and split already set
    run_dir: Path
    split_path: Path

    @property
    def label(self) -> str:
        return " ".join(
            f"{'frac' if k == 'labeled_fraction' else k}={text(v)}" for k, v in self.values.items()
        )

    def state(self) -> str:
        """``done``, ``resume`` (has a checkpoint), ``restart`` (killed before one) or ``new``."""
        run = RunFolder(self.run_dir)
        if run.final_metrics.is_file():
            return "done"
        if run.last.is_file():
            return "resume"
        if self.run_dir.exists():
            return "restart"
        return "new"


def text(v: Any) -> str:
    """A grid value as people write it (true, none, 0.1)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return str(v)


def result_options(cfg: TrainConfig) -> dict[str, Any]:
    """The options a run's numbers depend on (runtime options and the folders left out)."""
    return {k: v for k, v in cfg.to_dict().items()
            if k not in RUNTIME_KEYS and k not in RESERVED_KEYS}


def fingerprint(cfg: TrainConfig, *parts: Any) -> str:
    """A short hash of a run's result options and ``parts`` (e.g. how its split was made)."""
    data = json.dumps([result_options(cfg), *parts], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:8]


def check_same_config(cell: Cell, source: str, params: tuple[type, ...]) -> None:
    """A run folder made earlier must have been made with this cell's result options."""
    run = RunFolder(cell.run_dir)
    saved_path = run.config
    if not saved_path.is_file():
        raise RsdmlError(
            f"{cell.run_dir} has a checkpoint but no config.yaml; delete that folder to run the "
            "cell again"
        )
    from rsdml.training.methods.registry import check_method
    from rsdml.training.runner import split_defaults, unset_split_defaults

    # The saved options as run (the method's parameters with their defaults, others dropped).
    saved = check_method(TrainConfig.from_yaml(saved_path, params=params))
    cfg = cell.config
    # What the run filled in from its split, the cell fills in from the same split (a run made
    # before such an option existed recorded none: compared as unset, as it was then).
    recorded = [k for k in unset_split_defaults(cfg) if saved.method_params.get(k) is not None]
    if recorded and run.split.is_file():
        filled = split_defaults(cfg, run.read_split(saved.protocol)).method_params
        cfg = cfg.replace(method_params={**cfg.method_params, **{k: filled[k] for k in recorded}})
    diffs = []
    names = dict.fromkeys([*saved.to_dict(), *cfg.to_dict()])
    for name in names:
        if name in RUNTIME_KEYS or name in RESERVED_KEYS:
            continue
        old, new = saved.value(name), cfg.value(name)
        if name == "data" and old and new:
            same = Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
        else:
            same = old == new
        if not same:
            diffs.append(f"{name} {old!r} -> {new!r}")
    if diffs:
        raise RsdmlError(
            f"{cell.run_dir} was made with other options than {source} now gives "
            f"({'; '.join(diffs)}); choose another --out, or delete that run folder to redo "
            "the cell"
        )


def remove_unfinished(run_dir: Path) -> None:
    """Remove a cell folder killed before its first checkpoint, but never nested runs."""
    nested = [p for p in run_dir.rglob("config.yaml") if p.parent != run_dir]
    if nested:
        raise RsdmlError(
            f"{run_dir} has no checkpoint but holds other run folders ({nested[0].parent}); "
            "move them away or choose another --out"
        )
    shutil.rmtree(run_dir)


def is_interrupt(e: BaseException) -> bool:
    """A TrainingInterrupted (its module is loaded whenever one was raised)."""
    trainer = sys.modules.get("rsdml.training.trainer")
    return trainer is not None and isinstance(e, trainer.TrainingInterrupted)


def run_cell(cell: Cell, train: TrainFn, runtime: dict[str, Any]) -> dict[str, Any]:
    """Train a cell that is not done: resume it from its checkpoint (with the ``runtime``
    options of this call), or start it (again, removing what a run killed before its first
    checkpoint left). Returns the run's final metrics."""
    state = cell.state()
    if state == "done":
        raise ValueError(f"cell {cell.label} is finished")
    if state == "resume":
        return train(TrainConfig(), resume=cell.run_dir, overrides=dict(runtime))
    if state == "restart":
        remove_unfinished(cell.run_dir)
    return train(cell.config)
