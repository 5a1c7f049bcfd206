"""The within-class retrieval measure: ranks by hand, and the altered copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsdml.evaluation.copies import altered_copy, copy_detection, copy_queries


def test_copy_detection_by_hand():
    gallery = np.eye(4, dtype=np.float32)
    # copy 0 is nearest its original (row 0); copy 1's original (row 1) is second; copy 2's third
    copies = np.array([[1.0, 0.1, 0.0, 0.0], [0.9, 0.5, 0.0, 0.0], [0.9, 0.8, 0.3, 0.0]])
    out = copy_detection(copies, gallery, np.array([0, 1, 2]))
    assert out["copy_top1"] == pytest.approx(1 / 3)
    assert out["copy_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_altered_copy_mirrors_and_crops():
    x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    x[..., :, :2] = 255  # a bright left stripe
    y = altered_copy(x)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert y[..., :, -1].float().mean() > 100 and y[..., :, 0].float().mean() < 1  # mirrored
    plain = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    assert not torch.equal(altered_copy(plain), plain.flip(-1))  # and cropped


def test_copy_queries_are_a_seeded_sample():
    assert list(copy_queries(5, 0, limit=10)) == [0, 1, 2, 3, 4]
    a, b = copy_queries(1000, 1, limit=50), copy_queries(1000, 1, limit=50)
    assert len(a) == 50 and np.array_equal(a, b) and len(set(a)) == 50
