"""EntropyMinimizationLoss against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from rsdml.losses import EntropyMinimizationLoss

ENT = EntropyMinimizationLoss()


@pytest.mark.parametrize("c", [1, 2, 7, 30])
def test_uniform_is_log_c(device: torch.device, dtype: torch.dtype, c: int) -> None:
    p = torch.full((5, c), 1.0 / c, device=device, dtype=dtype)
    assert ENT(p).item() == pytest.approx(math.log(c), abs=1e-6)


def test_one_hot_is_zero_with_finite_gradient(device: torch.device, dtype: torch.dtype) -> None:
    p = torch.eye(4, device=device, dtype=dtype)[[0, 1, 1, 3]].requires_grad_(True)
    out = ENT(p)
    out.backward()
    assert out.item() == 0.0
    assert torch.isfinite(p.grad).all()


def test_hand_value_is_mean_over_rows(device: torch.device) -> None:
    # Row 0: -(.5 ln .5 + 2 * .25 ln .25) = 1.5 ln 2 = 1.0397208; row 1: one-hot, 0.
    p = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]], device=device)
    assert ENT(p).item() == pytest.approx(0.75 * math.log(2), abs=1e-6)


def test_entropy_ignores_diversity() -> None:
    # The blind spot that BNM fixes: collapsed and diverse confident batches score the same.
    eye = torch.eye(4)
    diverse = torch.softmax(8 * eye[torch.arange(8) % 4], dim=1)
    collapsed = torch.softmax(8 * eye[torch.zeros(8, dtype=torch.long)], dim=1)
    torch.testing.assert_close(ENT(diverse), ENT(collapsed))


def test_adam_on_free_logits_decreases_loss() -> None:
    torch.manual_seed(0)
    logits = (0.1 * torch.randn(16, 6)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    start = ENT(logits.softmax(1)).item()
    for _ in range(30):
        opt.zero_grad()
        ENT(logits.softmax(1)).backward()
        opt.step()
    assert ENT(logits.softmax(1)).item() < 0.5 * start


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        ENT(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="eps"):
        EntropyMinimizationLoss(eps=0.0)
