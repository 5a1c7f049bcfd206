"""rsdml.allocator: inside kept_memory a repeated large allocation stops page-faulting, and
leaving it returns the memory; RSDML_MALLOC=system turns it off; only the compute commands
enable it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rsdml.cli.main import COMPUTE_COMMANDS, _command

_PROBE = """
import resource, sys
from rsdml import allocator
on = allocator.enable() if sys.argv[1] == "1" else False
import torch

def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
with allocator.kept_memory():
    with allocator.kept_memory():  # nested: acts once
        pass
    for i in range(30):  # the first rounds grow the heap (aligned requests); then it is reused
        if i == 20:
            before = usage()
        x = torch.ones(16 * 2**20)  # 64 MiB, written: every page touched
        del x
    faults = usage() - before
    inside = resident()
print(int(on), faults, inside - resident())
"""


def _probe(keep: bool, env: dict[str, str] | None = None) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, "1" if keep else "0"], check=True,
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    on, faults, returned = out.stdout.split()
    return on == "1", int(faults), int(returned)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_stops_the_page_faults_and_returns_the_memory_after():
    on, kept, returned = _probe(True)
    off, system, _ = _probe(False)
    assert on and not off
    # 10 x 64 MiB of 4 KiB pages: about 164,000 faults when each allocation is a fresh mmap
    assert system > 100_000
    assert kept < system / 20, (kept, system)
    assert returned > 64 * 2**20  # leaving the passes gave the kept heap back


def test_rsdml_malloc_system_keeps_the_defaults():
    on, _, _ = _probe(True, {"RSDML_MALLOC": "system"})
    assert not on


def test_only_the_compute_commands_enable_it():
    assert _command(["train", "--data", "x"]) == "train" in COMPUTE_COMMANDS
    assert _command(["--version"]) is None
    for quiet in ("serve", "label", "search", "list", "cache", "datasets", "split"):
        assert quiet not in COMPUTE_COMMANDS
