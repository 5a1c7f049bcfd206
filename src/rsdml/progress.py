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
                left = f", about {duration((now - start) / done * (total - done), eta=True)} left"
            print(f"{desc}: {shown} ({now - start:.0f}s{left})", file=sys.stderr, flush=True)
            last, printed = now, True


def duration(seconds: float, eta: bool = False) -> str:
    """4m10s for elapsed times; an ETA above a minute rounds to the minute (9m, 1h05m)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if eta:
        h, m = divmod(int(round(s / 60)), 60)
        return f"{h}h{m:02d}m" if h else f"{m}m"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
