"""Fast mode keeps the trunk features of the copy-detection measure's altered copies: a frozen
trunk gives an image's copy the same feature in every run, so each is computed once."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from consistencyhelp import _cfg

from rsdml.data.cache_files import cache_files
from rsdml.training.frozen import copy_features
from rsdml.training.runner import evaluate_run, train


def _trunk(calls: list[list[int]]):
    def compute(rows: np.ndarray) -> torch.Tensor:
        calls.append(rows.tolist())
        return torch.as_tensor(rows, dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0])
    return compute


def test_each_copy_is_computed_once_and_returned_in_the_rows_order(tmp_path):
    calls: list[list[int]] = []
    first = copy_features("k", tmp_path, np.array([7, 2, 5]), _trunk(calls))
    assert first.tolist() == [[7, -7], [2, -2], [5, -5]]
    again = copy_features("k", tmp_path, np.array([9, 5, 2]), _trunk(calls))
    assert again.tolist() == [[9, -9], [5, -5], [2, -2]]
    assert calls == [[2, 5, 7], [9]]  # the second call computed only the new row
    copy_features("k", tmp_path, np.array([2, 9]), _trunk(calls))
    assert len(calls) == 2
    copy_features("other", tmp_path, np.array([2]), _trunk(calls))  # another key: its own file
    assert calls[-1] == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copies-k-f1.npz", "copies-other-f1.npz"]
    assert {f.path.name for f in cache_files(tmp_path)} == {"copies-k-f1.npz", "copies-other-f1.npz"}


def test_a_damaged_copy_cache_is_computed_again(tmp_path, caplog):
    calls: list[list[int]] = []
    copy_features("k", tmp_path, np.array([1, 3]), _trunk(calls))
    (tmp_path / "copies-k-f1.npz").write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING):
        out = copy_features("k", tmp_path, np.array([3, 1]), _trunk(calls))
    assert out.tolist() == [[3, -3], [1, -1]] and calls[-1] == [1, 3]
    assert "damaged" in caplog.text


def test_fast_mode_evaluation_reuses_the_copies_and_scores_the_same(tiny_scenes, tmp_path,
                                                                   monkeypatch):
    import rsdml.evaluation.copies as copies

    run = tmp_path / "fast"
    result = train(_cfg(tiny_scenes, run, freeze_backbone=True, epochs=1, view_weak=4,
                        view_strong=2, view_stages=1))
    assert 0.0 <= result["copy_top1"] <= 1.0
    saved = [f for f in cache_files() if f.path.name.startswith("copies-")]
    assert saved, "fast mode cached the copies' trunk features"

    def no_copies(images):
        raise AssertionError("the copies were made again")

    monkeypatch.setattr(copies, "altered_copy", no_copies)
    again = evaluate_run(run, quiet=True)
    assert again["copy_top1"] == result["copy_top1"]
    assert again["copy_mrr"] == pytest.approx(result["copy_mrr"], abs=1e-12)


def test_a_trunk_that_trains_makes_its_copies_every_time(tiny_scenes, tmp_path):
    before = {f.path for f in cache_files() if f.path.name.startswith("copies-")}
    train(_cfg(tiny_scenes, tmp_path / "ft", epochs=1))
    after = {f.path for f in cache_files() if f.path.name.startswith("copies-")}
    assert after == before  # fine-tuned weights: nothing cached
