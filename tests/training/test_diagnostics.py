"""Collapse diagnostics on constructed embeddings, and the warning a collapsing run gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsdml.training.diagnostics import (
    collapse_warning,
    effective_rank,
    embedding_diagnostics,
    is_collapsed,
    mixed_batch,
    prediction_diagnostics,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_effective_rank_hand_values():
    assert effective_rank([3.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert effective_rank([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)
    # p = (0.5, 0.25, 0.25): exp(H) = exp(1.5 ln 2) = 2 ** 1.5
    assert effective_rank([2.0, 1.0, 1.0]) == pytest.approx(2 ** 1.5)


def test_spread_embeddings_are_not_collapsed():
    rng = np.random.default_rng(0)
    emb = _unit(rng.standard_normal((400, 16)))
    d = embedding_diagnostics(emb)
    assert abs(d["emb_mean_cosine"]) < 0.02
    assert d["emb_effective_rank"] > 12
    assert d["emb_std"] == pytest.approx(emb.std(0, ddof=1).mean(), rel=1e-6)
    assert not is_collapsed(d)


def test_collapsed_embeddings_are_flagged():
    rng = np.random.default_rng(0)
    centre = np.ones((1, 16))
    emb = _unit(centre + 0.01 * rng.standard_normal((300, 16)))
    d = embedding_diagnostics(emb)
    # mean pairwise cosine by a plain double loop on a subset
    sub = emb[:40]
    naive = np.mean([sub[i] @ sub[j] for i in range(40) for j in range(40) if i != j])
    assert embedding_diagnostics(sub)["emb_mean_cosine"] == pytest.approx(naive, rel=1e-9)
    assert d["emb_mean_cosine"] > 0.99
    assert d["emb_effective_rank"] < 2.0
    assert is_collapsed(d)
    msg = collapse_warning(d, 4)
    assert "epoch 4" in msg and "--lr" in msg and "\n" not in msg


def test_two_antipodal_points_flagged_by_rank():
    emb = np.array([[1.0, 0.0]] * 50 + [[-1.0, 0.0]] * 50)
    d = embedding_diagnostics(emb)
    assert d["emb_effective_rank"] == pytest.approx(1.0)
    assert is_collapsed(d)


def test_prediction_diagnostics():
    d = prediction_diagnostics([1.0, 1.0, 0.0])
    assert d["pred_nuclear_mean"] == pytest.approx(2 / 3)
    assert d["pred_effective_rank"] == pytest.approx(2.0)


def test_mixed_batch_holds_several_classes_of_a_class_sorted_pool():
    labels = torch.arange(10).repeat_interleave(50)  # 10 classes, sorted like a split
    index = torch.arange(500)
    batch = mixed_batch(index, 64, seed=3)
    assert len(batch) == 64 and len(set(batch.tolist())) == 64
    assert len(set(labels[batch].tolist())) >= 5
    assert torch.equal(batch, mixed_batch(index, 64, seed=3))  # fixed for a run
    assert len(mixed_batch(index[:20], 64, seed=3)) == 20
