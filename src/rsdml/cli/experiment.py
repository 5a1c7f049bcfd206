"""``rsdml experiment GRID.yaml --out DIR``: parses arguments and calls the experiment runner."""

from __future__ import annotations

from typing import Any

import click

from rsdml.config import DEVICES


@click.command()
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Experiment folder: runs/, splits/, results.csv, results.md, results.png. "
                   "Run the same command again to resume.")
@click.option("--device", type=click.Choice(DEVICES), default=None,
              help="Training device for every cell (overrides the grid file).")
@click.option("--quiet", is_flag=True, help="No per-run progress bars (the cell lines stay).")
@click.option("--keep-going", is_flag=True,
              help="When a cell fails (e.g. a diverged loss), go on with the others; "
                   "exit 2 at the end.")
@click.option("--dry-run", is_flag=True,
              help="List the cells and what would happen to each; run nothing.")
def experiment(grid: str, out: str, device: str | None, quiet: bool, keep_going: bool,
               dry_run: bool) -> None:
    """Train a grid of runs (methods x labelled fractions x seeds x ...) and tabulate them.

    GRID is a YAML file with `base:` (options shared by every run, as in `rsdml train
    --config`) and `grid:` (options with a list of values each). See docs/experiments.md.
    """
    from rsdml.training.experiment import load_grid, plan_cells, run_experiment

    overrides: dict[str, Any] = {}
    if device:
        overrides["device"] = device
    if quiet:
        overrides["quiet"] = True
    parsed = load_grid(grid)
    if dry_run:
        cells = plan_cells(parsed, out, overrides)
        actions = {"done": "finished, skip", "resume": "resume from its checkpoint",
                   "restart": "unfinished without a checkpoint, start again", "new": "run"}
        for cell in cells:
            click.echo(f"[cell {cell.index}/{len(cells)}] {cell.label}: {actions[cell.state()]} "
                       f"({cell.run_dir})")
        return
    result = run_experiment(parsed, out, overrides=overrides, keep_going=keep_going)
    click.echo(f"results: {result.markdown} (table), {result.csv} (every run), "
               f"{result.plot} (plot)")
