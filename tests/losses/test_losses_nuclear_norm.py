"""BNM and FBNM against hand-computed nuclear norms / column norms, gradcheck and orderings."""

from __future__ import annotations

import math

import pytest
import torch

from rsdml.losses import BatchNuclearNormLoss, FastBatchNuclearNormLoss

BNM = BatchNuclearNormLoss()
FBNM = FastBatchNuclearNormLoss()


def _t(rows: list[list[float]], device: torch.device, dtype: torch.dtype = torch.float64):
    return torch.tensor(rows, device=device, dtype=dtype)


@pytest.mark.parametrize("shape", [(4, 3), (3, 5), (1, 4), (5, 1), (6, 6)])
def test_bnm_is_minus_mean_singular_value(device: torch.device, dtype: torch.dtype,
                                          shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(*shape, device=device, dtype=dtype), dim=1)
    s = torch.linalg.svdvals(p)
    assert s.numel() == min(shape)
    torch.testing.assert_close(BNM(p), -s.mean())
    torch.testing.assert_close(BNM(p), -torch.linalg.matrix_norm(p, ord="nuc") / min(shape))


def test_bnm_hand_computed(device: torch.device) -> None:
    # P P^T = [[.5, .25], [.25, .5]], eigenvalues .75 and .25: sigma = sqrt(.75), .5.
    p = _t([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], device)
    torch.testing.assert_close(BNM(p).item(), -(math.sqrt(0.75) + 0.5) / 2)  # -0.6830127
    # One-hot rows with class counts (2, 1, 1): sigma = sqrt(2), 1, 1 -> -(sqrt 2 + 2) / 3.
    onehot = _t([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], device)
    torch.testing.assert_close(BNM(onehot).item(), -1.1380711874576983)
    # Rank one: all rows equal (collapsed) -> one singular value ||P||_F.
    same = _t([[0.25, 0.75]] * 4, device)
    torch.testing.assert_close(BNM(same).item(), -math.sqrt(4 * (0.25**2 + 0.75**2)) / 2)


def test_bnm_gradcheck() -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: BNM(torch.softmax(z, dim=1)), (logits,))
    tall = torch.rand(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(BNM, (tall,))


@pytest.mark.parametrize("loss", [BNM, FBNM], ids=["bnm", "fbnm"])
def test_diverse_confident_beats_collapsed_and_uniform(device: torch.device, loss) -> None:
    eye = torch.eye(4, device=device)
    diverse = torch.softmax(10 * eye[torch.arange(8, device=device) % 4], dim=1)
    collapsed = torch.softmax(10 * eye[torch.zeros(8, dtype=torch.long, device=device)], dim=1)
    uniform = torch.full((8, 4), 0.25, device=device)
    assert loss(diverse) < loss(collapsed) - 0.3
    assert loss(diverse) < loss(uniform) - 0.3


@pytest.mark.parametrize("loss", [BNM, FBNM], ids=["bnm", "fbnm"])
@pytest.mark.parametrize("shape", [(1, 5), (3, 8), (8, 3)])
def test_degenerate_inputs_give_finite_gradients(device: torch.device, loss,
                                                 shape: tuple[int, int]) -> None:
    for p0 in (torch.full(shape, 1.0 / shape[1]), torch.rand(shape).softmax(1)[:1].expand(shape)):
        p = p0.clone().to(device).requires_grad_(True)
        out = loss(p)
        out.backward()
        assert out.shape == () and torch.isfinite(out) and torch.isfinite(p.grad).all()


def test_fbnm_hand_computed(device: torch.device, dtype: torch.dtype) -> None:
    # B < C: column norms .5, sqrt(.5), .5; k = 2 largest: -(0.7071068 + 0.5) / 2.
    p = _t([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], device, dtype)
    assert FBNM(p).item() == pytest.approx(-0.6035533905932737, abs=1e-6)
    # B > C: column norms sqrt(.81+.64+.09), sqrt(.01+.04+.49); k = 2: -(1.2409674+0.7348469)/2.
    p = _t([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]], device, dtype)
    assert FBNM(p).item() == pytest.approx(-0.9879071437170196, abs=1e-6)
    # B = 1: k = 1, the largest entry.
    assert FBNM(_t([[0.2, 0.7, 0.1]], device, dtype)).item() == pytest.approx(-0.7, abs=1e-6)
    # Only the top-k columns count: the smallest column (0.1) is ignored when B = 2 < C = 3.
    p = _t([[0.6, 0.3, 0.1], [0.6, 0.4, 0.0]], device, dtype)
    assert FBNM(p).item() == pytest.approx(-(math.sqrt(0.72) + 0.5) / 2, abs=1e-6)


@pytest.mark.parametrize("shape", [(32, 10), (6, 10), (10, 10)])
def test_fbnm_close_to_bnm_for_near_one_hot(device: torch.device, dtype: torch.dtype,
                                            shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(2)
    b, c = shape
    y = torch.randint(0, c, (b,), generator=g)
    logits = 15.0 * torch.nn.functional.one_hot(y, c) + 0.5 * torch.randn(b, c, generator=g)
    p = torch.softmax(logits.to(device=device, dtype=dtype), dim=1)
    assert abs(FBNM(p).item() - BNM(p).item()) < 1e-3


def test_fbnm_differs_from_bnm_for_diffuse(device: torch.device) -> None:
    torch.manual_seed(3)
    p = torch.softmax(torch.randn(16, 8, device=device, dtype=torch.float64), dim=1)
    assert abs(FBNM(p).item() - BNM(p).item()) > 0.05


def test_mixed_precision_computes_in_float32() -> None:
    torch.manual_seed(4)
    p = torch.softmax(torch.randn(12, 5), dim=1)
    for loss in (BNM, FBNM):
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = loss(p.bfloat16())
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, loss(p.bfloat16().float()))


def test_rejects_non_matrices() -> None:
    for loss in (BNM, FBNM):
        with pytest.raises(ValueError, match=r"\(B, C\)"):
            loss(torch.rand(3))
        with pytest.raises(ValueError, match=r"\(B, C\)"):
            loss(torch.rand(0, 4))


@pytest.mark.parametrize("loss", [BNM, FBNM], ids=["bnm", "fbnm"])
def test_adam_on_free_logits_decreases_loss(loss) -> None:
    torch.manual_seed(5)
    logits = (0.1 * torch.randn(16, 6)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    start = loss(logits.softmax(1)).item()
    for _ in range(30):
        opt.zero_grad()
        loss(logits.softmax(1)).backward()
        opt.step()
    assert loss(logits.softmax(1)).item() < start - 0.2
