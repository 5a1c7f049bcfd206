"""InfoNCE between two views against a plain loop, and its gradient reaches the strong view only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsdml.losses import ViewContrastLoss


def test_view_contrast_equals_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    s = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    w = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    t = 0.1
    total = 0.0
    for i in range(5):
        sims = [float(s[i] @ w[j]) / t for j in range(5)]
        total += -(sims[i] - math.log(sum(math.exp(x) for x in sims)))
    assert ViewContrastLoss(t)(s, w).item() == pytest.approx(total / 5, rel=1e-6)


def test_view_contrast_gradient_flows_into_the_strong_view_only():
    s = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    w = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    ViewContrastLoss()(s, w).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and w.grad is None
    with pytest.raises(ValueError):
        ViewContrastLoss()(s, w[:3])
