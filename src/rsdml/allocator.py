"""glibc's allocator, set for tensor work: freed memory stays in the process for reuse.

Why: glibc serves each allocation above 32 MiB with a fresh ``mmap`` and unmaps it when freed,
and returns the heap's free top to the system; a CPU step allocates and frees activations of
tens to hundreds of MiB, so every step page-faults them in again, and the kernel's page
clearing takes a third of the CPU time. Keeping freed memory made an EfficientNet-Lite0
training step 2.1x and the fast-mode view build 1.9x faster on the 2-core machine
(docs/results.md, "The allocator"), for a higher peak RSS (memory freed is kept, not returned).

Only the long compute commands set it (``rsdml train`` and friends, not the servers); a
process that imports rsdml as a library keeps its allocator unless it calls
:func:`keep_freed_memory`. ``RSDML_MALLOC=system`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: ``RSDML_MALLOC=system`` keeps glibc's defaults.
ENV = "RSDML_MALLOC"
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NO_TRIM = 1 << 30  # bytes of free heap top kept before any is returned


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and keep its freed top (``mallopt``); True when set
    (Linux with glibc, and not turned off by ``RSDML_MALLOC=system``)."""
    if os.environ.get(ENV, "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NO_TRIM))
