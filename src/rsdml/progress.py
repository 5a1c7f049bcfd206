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
    """Iterate with a bar on a terminal; otherwise (a log file) a plain line at 10% steps, at
    most one every 5 s, so short loops stay silent and long ones show they are alive."""
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
    step = max(1, (total or 0) // 10)
    printed = False
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        at_mark = bool(total) and (done % step == 0 or done == total)
        if (at_mark and (now - last >= 5 or (printed and done == total))) or now - last >= 30:
            shown = f"{done}/{total}" if total else str(done)
            left = ""
            if total and done < total:  # at the rate so far, as tqdm's bar says on a terminal
                left = f", about {_short((now - start) / done * (total - done))} left"
            print(f"{desc}: {shown} ({now - start:.0f}s{left})", file=sys.stderr, flush=True)
            last, printed = now, True


def _short(seconds: float) -> str:
    """45s, 3m, 1h05m: a remaining time to the precision it has."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    return f"{minutes}m" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
