"""The cache folder as a user sees it: what is there, and clearing what is no longer used.

Every image cache is keyed by its files and resolution, so trying other sizes or data sets
leaves old caches behind (1.9 GB for AID at 256 px). Each cache file's modification time is
set whenever a run reuses it, so "last used" is its mtime.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from rsdml.data.cache import IMAGE_CACHE_GLOB, default_cache_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: nothing is locked, nothing is skipped
    fcntl = None  # type: ignore[assignment]

# features and copies: training/frozen.py; views: training/views.py (and an interrupted
# build's parts)
_PATTERNS = (IMAGE_CACHE_GLOB, "features-*.pt", "copies-*.npz", "views-*.npy",
             "views-*.npy.partial")


@dataclass(frozen=True)
class CacheFile:
    path: Path
    nbytes: int
    last_used: float  # seconds since the epoch


def cache_files(folder: str | Path | None = None) -> list[CacheFile]:
    """The decoded-image and trunk-feature caches in ``folder``, most recently used first."""
    folder = Path(folder).expanduser() if folder is not None else default_cache_dir()
    found = []
    for pattern in _PATTERNS:
        for p in folder.glob(pattern):
            try:
                st = p.stat()
            except OSError:  # removed meanwhile
                continue
            found.append(CacheFile(p, st.st_size, st.st_mtime))
    return sorted(found, key=lambda f: (-f.last_used, f.path.name))


def clear_cache(folder: str | Path | None = None,
                older_than_days: float = 0.0) -> tuple[list[CacheFile], list[CacheFile]]:
    """Delete the caches not used for ``older_than_days`` days. An image cache that another
    process is building right now (its lock is held) is kept. Returns (removed, kept)."""
    cutoff = time.time() - older_than_days * 86400
    removed, kept = [], []
    for f in cache_files(folder):
        if f.last_used > cutoff or _being_built(f.path):
            kept.append(f)
            continue
        try:
            f.path.unlink()
        except FileNotFoundError:
            continue
        base = f.path.name.removesuffix(".partial")
        if base.startswith("views-"):  # a view cache: its build's lock and resume record too
            for suffix in (".partial.lock", ".progress"):
                f.path.with_name(base + suffix).unlink(missing_ok=True)
        removed.append(f)
    return removed, kept


def _being_built(path: Path) -> bool:
    lock = path.with_name(path.name + ".lock")
    if fcntl is None or not lock.exists():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the lock if it was taken
    return False
