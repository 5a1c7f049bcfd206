"""Progress reporting that suits both a terminal (a tqdm bar) and a log file (plain lines)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True
) -> Iterator[T]:
    """Iterate with a bar on a terminal, or a plain line at most every 10% / 30 s otherwise."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    start = last = time.monotonic()
    next_frac = 0.1
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        frac = done / total if total else 0.0
        if (total and frac >= next_frac) or now - last >= 30:
            shown = f"{done}/{total}" if total else str(done)
            print(f"{desc}: {shown} ({now - start:.0f}s)", file=sys.stderr, flush=True)
            last = now
            while total and next_frac <= frac:
                next_frac += 0.1
