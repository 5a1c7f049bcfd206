"""``rsdml tune GRID.yaml --out DIR``: parses arguments and calls the labelled-only tuner."""

from __future__ import annotations

from typing import Any

import click

from rsdml.config import DEVICES


@click.command()
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Tuning folder: one run per candidate and fold, tune.md, tune.json and "
                   "best.yaml. Run the same command again to resume.")
@click.option("--folds", type=int, default=3, show_default=True,
              help="Stratified folds of the labelled images; 1 = one held-out part (--holdout).")
@click.option("--holdout", type=float, default=0.25, show_default=True,
              help="With --folds 1: the fraction of each class's labelled images held out.")
@click.option("--device", type=click.Choice(DEVICES), default=None,
              help="Training device for every run (overrides the grid file).")
@click.option("--quiet", is_flag=True, help="No per-run progress bars.")
def tune(grid: str, out: str, folds: int, holdout: float, device: str | None,
         quiet: bool) -> None:
    """Choose hyper-parameters on held-out labelled images only, never on test images.

    GRID is an experiment grid (`base:` + `grid:`, as for `rsdml experiment`); each
    combination is a candidate, trained once per fold with that fold of the labelled images
    held out. The best held-out kNN accuracy, averaged over the folds and any seeds, wins:
    OUT/best.yaml is its `rsdml train --config` file. labeled_fraction cannot be an axis.
    A changed grid trains new runs; finished ones are reused. See docs/experiments.md.
    """
    from rsdml.training.tune import run_tune

    overrides: dict[str, Any] = {}
    if device:
        overrides["device"] = device
    if quiet:
        overrides["quiet"] = True
    result = run_tune(grid, out, folds=folds, holdout=holdout, overrides=overrides)
    click.echo(f"table: {result.table}; best config: {result.best_config}")
