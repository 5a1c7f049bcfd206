"""``rsdml datasets list|download`` and ``rsdml split``: parse arguments, call
rsdml.data.datasets."""

from __future__ import annotations

import click

from rsdml.config import PROTOCOLS


@click.group()
def datasets() -> None:
    """The public scene data sets: what they are, and a verified download of each."""


@datasets.command(name="list")
def list_datasets() -> None:
    """One line per data set: classes, images, size, licence, checksum, source."""
    from rsdml.data.datasets import DATASETS, installed

    rows = [("name", "classes", "images", "size", "download", "checksum", "here", "licence",
             "source")]
    for d in DATASETS.values():
        rows.append((d.name, str(d.classes), f"{d.images:,}", d.size,
                     "direct" if d.urls else "manual", d.checksum,
                     "yes" if installed(d) else "no", d.licence, d.homepage))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@datasets.command()
@click.argument("name")
@click.option("--root", default=None, type=click.Path(file_okay=False),
              help="Folder that holds the data sets (default $RSDML_DATA or "
                   "~/.cache/rsdml/datasets); the data set goes to ROOT/NAME.")
@click.option("--keep-archive", is_flag=True, help="Keep the downloaded archive after "
              "extracting it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def download(name: str, root: str | None, keep_archive: bool, quiet: bool) -> None:
    """Download data set NAME (resuming a cut download), check its checksum, extract it into
    one folder per class and check its class and image counts."""
    from rsdml.data.datasets import download_dataset

    folder = download_dataset(name, root, show=not quiet, keep_archive=keep_archive)
    click.echo(f"{name}: ready in {folder} (use --data {name} or --data {folder})")


@click.command()
@click.argument("data")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Split file to write (CSV, with its contract beside it as .json).")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=None,
              help="transductive (unlabelled pool = test images) or inductive [default: the "
                   "data set's recipe, else transductive].")
@click.option("--labeled-fraction", type=float, default=None,
              help="Fraction of each class that is labelled [default: the recipe's, 0.2].")
@click.option("--val-fraction", type=float, default=None,
              help="Inductive protocol: fraction of each class for validation [default: 0.1].")
@click.option("--test-fraction", type=float, default=None,
              help="Inductive protocol: fraction of each class for test [default: 0.2].")
@click.option("--seed", type=int, default=None, help="Seed of the split [default: 0].")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def split(data: str, out: str, protocol: str | None, labeled_fraction: float | None,
          val_fraction: float | None, test_fraction: float | None, seed: int | None,
          force: bool, quiet: bool) -> None:
    """Write a per-class, seeded split of DATA (a data set name or a folder) that `rsdml train
    --data DATA --split OUT` reuses."""
    from rsdml.data.datasets import write_split

    path, counts = write_split(data, out, protocol=protocol, labeled_fraction=labeled_fraction,
                               val_fraction=val_fraction, test_fraction=test_fraction,
                               seed=seed, force=force, progress=not quiet)
    click.echo(f"wrote {path} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
