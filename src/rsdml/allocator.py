"""glibc's allocator during a network's passes: freed memory stays in the process for reuse.

Why: glibc serves each allocation above 32 MiB with a fresh ``mmap`` and unmaps it when freed,
and returns the heap's free top to the system; a CPU forward or backward pass allocates and
frees activations of tens to hundreds of MiB, so every batch page-faults them in again, and
the kernel's page clearing took a third of the CPU time. Inside :func:`kept_memory` every
allocation comes from the heap and its freed top is kept: an EfficientNet-Lite0 training step
ran 2.1x and the fast-mode view build 1.9x faster on the 2-core machine (docs/results.md, "The
allocator"). On leaving, the thresholds are set to where glibc's own adaptation ends (mmap
above 32 MiB, trim above 64 MiB) and the free memory is returned (``malloc_trim``), so the
rest of a run (evaluation, caches, numpy) does not keep what the passes freed.

The compute commands (``rsdml train`` and friends, not the servers) call :func:`enable`; a
process that imports rsdml as a library keeps its allocator unless it does. Off where the C
library is not glibc, and with ``RSDML_MALLOC=system``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: ``RSDML_MALLOC=system`` keeps glibc's defaults.
ENV = "RSDML_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_KEEP = 1 << 30  # free heap top kept inside the passes (bytes)
_AFTER = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}

_libc: Any = None
_depth = 0


def enable() -> bool:
    """Let :func:`kept_memory` act in this process; True where it can (Linux with glibc, and
    not ``RSDML_MALLOC=system``)."""
    global _libc
    if os.environ.get(ENV, "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt does nothing)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return False
    _libc = libc
    return True


def enabled() -> bool:
    return _libc is not None


@contextmanager
def kept_memory() -> Iterator[None]:
    """Network passes inside keep freed memory for reuse (nothing without :func:`enable`;
    nested uses act once, at the outermost)."""
    global _depth
    outermost = _libc is not None and _depth == 0
    if outermost:
        _libc.mallopt(_M_MMAP_MAX, 0)
        _libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if outermost:
            for option, value in _AFTER.items():
                _libc.mallopt(option, value)
            _libc.malloc_trim(0)
