"""rsdml.allocator: freed memory is kept for reuse, so a repeated large allocation stops
page-faulting; RSDML_MALLOC=system turns it off; only the compute commands set it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rsdml.cli.main import COMPUTE_COMMANDS, _command

_PROBE = """
import resource, sys
from rsdml.allocator import keep_freed_memory
on = keep_freed_memory() if sys.argv[1] == "1" else False
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(30):  # the first rounds grow the heap (aligned requests); then it is reused
    if i == 20:
        before = faults()
    x = torch.ones(16 * 2**20)  # 64 MiB, written: every page touched
    del x
print(int(on), faults() - before)
"""


def _probe(keep: bool, env: dict[str, str] | None = None) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, "1" if keep else "0"], check=True,
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    on, faults = out.stdout.split()
    return on == "1", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_stops_the_page_faults_of_a_repeated_large_allocation():
    on, kept = _probe(True)
    off, system = _probe(False)
    assert on and not off
    # 10 x 64 MiB of 4 KiB pages: about 164,000 faults when each allocation is a fresh mmap
    assert system > 100_000
    assert kept < system / 20, (kept, system)


def test_rsdml_malloc_system_keeps_the_defaults():
    on, _ = _probe(True, {"RSDML_MALLOC": "system"})
    assert not on


def test_only_the_compute_commands_set_it():
    assert _command(["train", "--data", "x"]) == "train" in COMPUTE_COMMANDS
    assert _command(["--version"]) is None
    for quiet in ("serve", "label", "search", "list", "cache", "datasets", "split"):
        assert quiet not in COMPUTE_COMMANDS
