"""One atomic-write module: every replaced file has the folder's normal permissions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rsdml.fsutil import atomic_write_bytes, atomic_write_text


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_atomic_writes_leave_no_temp_and_use_the_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_text(tmp_path / "b.txt", "héllo")
    finally:
        os.umask(umask)
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]
    assert _mode(tmp_path / "a.bin") == _mode(tmp_path / "b.txt") == 0o644


def test_evaluation_files_are_0644_like_the_rest_of_the_run(tmp_path):
    """eval/ used mkstemp (mode 0600); it now writes through fsutil like every other file."""
    from rsdml.evaluation.suite import write_evaluation

    rng = np.random.default_rng(0)
    n = 24
    labels = np.repeat(np.arange(3), n // 3)
    roles = np.where(np.arange(n) % 4 == 0, "labeled", "test")
    umask = os.umask(0o022)
    try:
        write_evaluation(tmp_path / "eval", rng.normal(size=(n, 8)).astype(np.float32), labels,
                         roles, [f"c/{i}.png" for i in range(n)], ["a", "b", "c"], seed=0)
    finally:
        os.umask(umask)
    files = sorted((tmp_path / "eval").iterdir())
    assert [p.name for p in files] == ["embeddings.npz", "metrics.json"]
    assert all(_mode(p) == 0o644 for p in files)
