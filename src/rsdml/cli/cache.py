"""``rsdml cache list|clear``: parses arguments and calls rsdml.data.cache_files."""

from __future__ import annotations

import datetime as dt

import click

_DIR = click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                    help="Cache folder (default $RSDML_CACHE or ~/.cache/rsdml).")


def _line(f) -> str:
    when = dt.datetime.fromtimestamp(f.last_used).strftime("%Y-%m-%d %H:%M")
    return f"{f.nbytes / 2**20:10.1f} MiB  last used {when}  {f.path.name}"


@click.group()
def cache() -> None:
    """The decoded-image and trunk-feature caches: what they hold, and clearing old ones."""


@cache.command(name="list")
@_DIR
def list_cache(cache_dir: str | None) -> None:
    """List the caches, most recently used first, with their sizes."""
    from rsdml.data.cache import default_cache_dir
    from rsdml.data.cache_files import cache_files

    files = cache_files(cache_dir)
    folder = cache_dir or default_cache_dir()
    total = sum(f.nbytes for f in files)
    click.echo(f"{folder}: {len(files)} cache file(s), {total / 2**20:.1f} MiB")
    for f in files:
        click.echo(_line(f))


@cache.command()
@_DIR
@click.option("--older-than", "days", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Only caches not used for this many days.")
def clear(cache_dir: str | None, days: float) -> None:
    """Delete caches (all, or those unused for --older-than days); one being built is kept.
    A later run rebuilds what it needs."""
    from rsdml.data.cache_files import clear_cache

    removed, kept = clear_cache(cache_dir, days)
    freed = sum(f.nbytes for f in removed)
    click.echo(f"removed {len(removed)} cache file(s), {freed / 2**20:.1f} MiB; kept {len(kept)}")
