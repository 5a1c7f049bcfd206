"""Shared fixtures: a private cache folder for every test session, tiny synthetic data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AID = REPO.parent / "shared" / "data" / "AID"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never write into the user's ~/.cache/rsdml from tests."""
    os.environ["RSDML_CACHE"] = str(tmp_path_factory.mktemp("rsdml-cache"))


@pytest.fixture(autouse=True)
def _allocator_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's compute commands enable rsdml.allocator for the process; in-process tests
    get it back off after each test, so no test depends on which ran before it."""
    from rsdml import allocator

    monkeypatch.setattr(allocator, "_libc", None)


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic classes x 16 images of 32 px (session-wide; treat as read-only)."""
    from rsdml.data.synthetic import make_synthetic_scenes

    root = tmp_path_factory.mktemp("tiny-scenes")
    make_synthetic_scenes(root, n_classes=4, per_class=16, size=32, seed=0)
    return root


@pytest.fixture(scope="session")
def aid_root() -> Path:
    if not AID.is_dir():
        pytest.skip(f"real data set not found at {AID} (only present in the rsdml dev/CI setup)")
    return AID
