"""MarginSoftmaxLoss against hand-computed 2-D values and a plain-loop reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsdml.losses import MarginSoftmaxLoss


def _unit(deg: float, scale: float = 1.0) -> list[float]:
    return [scale * math.cos(math.radians(deg)), scale * math.sin(math.radians(deg))]


def _two_d_loss(device: torch.device, dtype: torch.dtype, margin: float = 0.5,
                temperature: float = 0.05) -> MarginSoftmaxLoss:
    """Class weights at 0, 90 and 180 degrees, deliberately not unit length."""
    loss = MarginSoftmaxLoss(3, 2, margin=margin, temperature=temperature)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5], [-3.0, 0.0]]))
    return loss.to(device=device, dtype=dtype)


def test_two_d_hand_values(device: torch.device, dtype: torch.dtype) -> None:
    loss = _two_d_loss(device, dtype)
    # e0 at 30 deg (label 0), e1 at 170 deg (label 0), e2 at 170 deg (label 1); not unit length.
    emb = torch.tensor([_unit(30, 3.0), _unit(170, 0.2), _unit(170, 1.0)], dtype=dtype,
                       device=device)
    labels = torch.tensor([0, 0, 1], device=device)
    # cosines: angles to the weights are (30, 60, 150), (170, 80, 10), (170, 80, 10) degrees.
    c30, c60, c80, c10 = 0.8660254037844386, 0.5, 0.17364817766693041, 0.984807753012208
    expected_cos = torch.tensor(
        [[c30, c60, -c30], [-c10, c80, c10], [-c10, c80, c10]], dtype=dtype, device=device
    )
    tol = dict(atol=1e-6, rtol=0) if dtype == torch.float32 else dict(atol=1e-12, rtol=0)
    torch.testing.assert_close(loss.cosines(emb), expected_cos, **tol)
    expected = expected_cos.clone()
    # Row 0: theta = pi/6, theta + m = 1.0235988 < pi, so cos(pi/6 + 0.5) = 0.5202960232.
    expected[0, 0] = 0.5202960232131908
    # Row 1: theta = 170 deg = 2.9671 >= pi - 0.5 = 2.6416, fallback
    #        cos(theta) - m sin(m) = -0.9848078 - 0.5 * 0.4794255 = -1.2245205223.
    expected[1, 0] = -1.2245205223143096
    # Row 2: theta = 80 deg = 1.3963, cos(1.3963 + 0.5) = -0.3197513748.
    expected[2, 1] = -0.3197513747849334
    torch.testing.assert_close(loss.logits(emb, labels) * 0.05, expected, **tol)


def test_fallback_switches_at_pi_minus_m(device: torch.device) -> None:
    loss = _two_d_loss(device, torch.float64)
    m = 0.5
    # Target class 0 (weight at angle 0); embeddings just inside / just beyond pi - m.
    thetas = [math.pi - m - 0.01, math.pi - m + 0.01]
    emb = torch.tensor([[math.cos(t), math.sin(t)] for t in thetas], dtype=torch.float64,
                       device=device)
    target = (loss.logits(emb, torch.tensor([0, 0], device=device)) * 0.05)[:, 0]
    # inside: cos(pi - 0.01) = -0.99995; beyond: cos(pi - 0.49) - 0.5 sin 0.5 = -1.1220456.
    torch.testing.assert_close(
        target, torch.tensor([-0.9999500004166653, -1.1220456279122228], dtype=torch.float64,
                             device=device), atol=1e-12, rtol=0)


def test_temperature_scales_logits(device: torch.device) -> None:
    torch.manual_seed(0)
    a = MarginSoftmaxLoss(5, 8, temperature=0.05).to(device)
    b = MarginSoftmaxLoss(5, 8, temperature=0.2).to(device)
    b.load_state_dict(a.state_dict())
    emb = torch.randn(6, 8, device=device)
    y = torch.randint(0, 5, (6,), device=device)
    torch.testing.assert_close(a.logits(emb, y) * 0.05, b.logits(emb, y) * 0.2)
    torch.testing.assert_close(a.logits(emb, y), b.logits(emb, y) * 4.0)
    assert not torch.allclose(a(emb, y), b(emb, y))


def test_gradients_reach_weights_and_embeddings(device: torch.device) -> None:
    torch.manual_seed(1)
    loss = MarginSoftmaxLoss(4, 6).to(device)
    emb = torch.randn(8, 6, device=device, requires_grad=True)
    loss(emb, torch.randint(0, 4, (8,), device=device)).backward()
    for g in (emb.grad, loss.weight.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_finite_gradients_at_cos_plus_minus_one(device: torch.device) -> None:
    loss = _two_d_loss(device, torch.float32)
    # Embeddings exactly on (cos = 1) and opposite to (cos = -1) their target weight.
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]], device=device, requires_grad=True)
    out = loss(emb, torch.tensor([0, 0, 1], device=device))
    out.backward()
    assert torch.isfinite(out)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(loss.weight.grad).all()


def test_zero_margin_is_normalised_softmax(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    loss = MarginSoftmaxLoss(7, 5, margin=0.0, temperature=0.1).to(device=device, dtype=dtype)
    emb = torch.randn(9, 5, device=device, dtype=dtype)
    y = torch.randint(0, 7, (9,), device=device)
    cos = F.normalize(emb, dim=1) @ F.normalize(loss.weight, dim=1).t()
    torch.testing.assert_close(loss(emb, y), F.cross_entropy(cos / 0.1, y))


def _loop_reference(emb: torch.Tensor, w: torch.Tensor, y: torch.Tensor, m: float,
                    tau: float) -> float:
    """Independent formulation: explicit angles via acos, python floats, log-sum-exp by hand."""
    total = 0.0
    for i in range(emb.shape[0]):
        e = [float(v) for v in emb[i]]
        en = math.sqrt(sum(v * v for v in e))
        logits = []
        for j in range(w.shape[0]):
            wj = [float(v) for v in w[j]]
            wn = math.sqrt(sum(v * v for v in wj))
            c = max(-1.0, min(1.0, sum(a * b for a, b in zip(e, wj)) / (en * wn)))
            if j == int(y[i]):
                theta = math.acos(c)
                c = math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)
            logits.append(c / tau)
        top = max(logits)
        lse = top + math.log(sum(math.exp(v - top) for v in logits))
        total += lse - logits[int(y[i])]
    return total / emb.shape[0]


@pytest.mark.parametrize("margin", [0.0, 0.5, 1.2])
def test_matches_loop_reference(device: torch.device, dtype: torch.dtype, margin: float) -> None:
    g = torch.Generator().manual_seed(3)
    loss = MarginSoftmaxLoss(6, 4, margin=margin, temperature=0.05)
    with torch.no_grad():
        loss.weight.copy_(torch.randn(6, 4, generator=g))
    emb = torch.randn(12, 4, generator=g)
    y = torch.randint(0, 6, (12,), generator=g)
    # Include samples beyond pi - m (opposite their own weight) so the fallback is exercised.
    emb[:3] = -loss.weight.detach()[y[:3]] + 0.05 * torch.randn(3, 4, generator=g)
    ref = _loop_reference(emb.double(), loss.weight.detach().double(), y, margin, 0.05)
    got = loss.to(device=device, dtype=dtype)(emb.to(device=device, dtype=dtype), y.to(device))
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert abs(got.item() - ref) <= tol * max(1.0, abs(ref))


def test_batch_of_one_and_autocast() -> None:
    torch.manual_seed(4)
    loss = MarginSoftmaxLoss(3, 8)
    emb = torch.randn(1, 8)
    y = torch.tensor([2])
    full = loss(emb, y)
    assert full.shape == () and torch.isfinite(full)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = loss(emb.bfloat16(), y)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, full, atol=0.05, rtol=0.01)  # bf16 rounding of the input


def test_rejects_bad_shapes_and_arguments() -> None:
    loss = MarginSoftmaxLoss(3, 4)
    with pytest.raises(ValueError, match="shape"):
        loss(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        loss(torch.randn(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="temperature"):
        MarginSoftmaxLoss(3, 4, temperature=0.0)
    with pytest.raises(ValueError, match="margin"):
        MarginSoftmaxLoss(3, 4, margin=2.0)


def test_adam_on_free_embeddings_decreases_loss() -> None:
    torch.manual_seed(5)
    loss = MarginSoftmaxLoss(4, 8)
    emb = torch.randn(16, 8, requires_grad=True)
    y = torch.arange(16) % 4
    opt = torch.optim.Adam([emb, *loss.parameters()], lr=0.05)
    start = loss(emb, y).item()
    for _ in range(20):
        opt.zero_grad()
        loss(emb, y).backward()
        opt.step()
    assert loss(emb, y).item() < 0.5 * start
