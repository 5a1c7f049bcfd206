"""SNCALoss against a plain-loop reference; the memory update against its formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsdml.losses import SNCALoss


def _loop_reference(emb: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                    memory: torch.Tensor, mem_labels: torch.Tensor, sigma: float) -> float:
    """mean over samples with a same-class neighbour of -log(sum_pos exp / sum_{k != i} exp)."""
    terms = []
    for b in range(emb.shape[0]):
        e = [float(v) for v in emb[b]]
        norm = math.sqrt(sum(v * v for v in e))
        e = [v / norm for v in e]
        num = den = 0.0
        for j in range(memory.shape[0]):
            if j == int(indices[b]):
                continue
            w = math.exp(sum(a * float(m) for a, m in zip(e, memory[j])) / sigma)
            den += w
            if int(mem_labels[j]) == int(labels[b]):
                num += w
        if num > 0.0:
            terms.append(-math.log(num / den))
    return sum(terms) / len(terms)


def _setup(n: int = 12, d: int = 5, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    memory = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return g, labels, memory


def test_matches_loop_reference(device: torch.device, dtype: torch.dtype) -> None:
    g, labels, memory = _setup()
    loss = SNCALoss(12, 5, labels, temperature=0.1, momentum=0.5).to(device=device, dtype=dtype)
    loss.reset_memory(memory.to(device))
    idx = torch.tensor([0, 4, 7, 11, 2])
    emb = 2.0 * torch.randn(5, 5, generator=g, dtype=torch.float64)  # not unit length
    ref = _loop_reference(emb.double(), labels[idx], idx, memory.double(), labels, 0.1)
    got = loss(emb.to(device=device, dtype=dtype), labels[idx].to(device), idx.to(device))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert abs(got.item() - ref) <= tol * max(1.0, abs(ref))


def test_loss_uses_memory_before_update_then_updates(device: torch.device) -> None:
    g, labels, memory = _setup(seed=1)
    memory = memory.float()
    loss = SNCALoss(12, 5, labels, temperature=0.05, momentum=0.3).to(device)
    loss.reset_memory(memory.to(device))
    idx = torch.tensor([3, 8, 1])
    emb = torch.randn(3, 5, generator=g)
    ref = _loop_reference(emb.double(), labels[idx], idx, memory.double(), labels, 0.05)
    got = loss(emb.to(device), labels[idx].to(device), idx.to(device))
    assert got.item() == pytest.approx(ref, rel=1e-5)
    # m_i <- normalize(0.3 m_i + 0.7 normalize(e_i)) for the batch; every other slot unchanged.
    expected = memory.clone()
    expected[idx] = F.normalize(0.3 * memory[idx] + 0.7 * F.normalize(emb, dim=1), dim=1)
    torch.testing.assert_close(loss.memory.cpu(), expected)
    torch.testing.assert_close(loss.memory.norm(dim=1).cpu(), torch.ones(12))


def test_update_memory_formula_by_hand() -> None:
    loss = SNCALoss(2, 2, torch.tensor([0, 1]), momentum=0.5)
    loss.reset_memory(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    loss.update_memory(torch.tensor([[0.0, 5.0]]), torch.tensor([0]))
    # 0.5 (1, 0) + 0.5 (0, 1) = (.5, .5) -> (1/sqrt 2, 1/sqrt 2); slot 1 untouched.
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(loss.memory, torch.tensor([[r, r], [0.0, 1.0]]))
    # Momentum weights the OLD memory: with 0.9 the slot barely moves towards e.
    slow = SNCALoss(1, 2, torch.tensor([0]), momentum=0.9)
    slow.reset_memory(torch.tensor([[1.0, 0.0]]))
    slow.update_memory(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    torch.testing.assert_close(slow.memory, F.normalize(torch.tensor([[0.9, 0.1]]), dim=1))


def test_repeated_indices_update_once_with_mean() -> None:
    loss = SNCALoss(3, 2, torch.tensor([0, 0, 1]), momentum=0.5)
    loss.reset_memory(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    emb = torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 3.0]])
    loss.update_memory(emb, torch.tensor([0, 2, 0]))
    # slot 0: mean of (0, 1), (0, 1) = (0, 1) -> normalize(.5 (1,0) + .5 (0,1));
    # slot 2: normalize(.5 (0,1) + .5 (0,-1)) = normalize(0) -> stays finite (F.normalize).
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(loss.memory[0], torch.tensor([r, r]))
    torch.testing.assert_close(loss.memory[1], torch.tensor([1.0, 0.0]))
    assert torch.isfinite(loss.memory).all()


def test_sample_without_same_class_neighbour_is_left_out(device: torch.device) -> None:
    g = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 0, 1, 1, 2])  # class 2 has a single member (slot 4)
    memory = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    loss = SNCALoss(5, 4, labels).to(device)
    loss.reset_memory(memory.to(device))
    emb = torch.randn(3, 4, generator=g, requires_grad=True)
    idx = torch.tensor([0, 4, 2])
    got = loss(emb.to(device), labels[idx].to(device), idx.to(device))
    ref = _loop_reference(emb.detach().double(), labels[idx], idx, memory.double(), labels, 0.05)
    assert got.item() == pytest.approx(ref, rel=1e-5)
    got.backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad[1].abs().sum() == 0  # the lone sample contributes nothing
    assert emb.grad[0].abs().sum() > 0


def test_batch_with_no_valid_sample_is_zero_and_backpropagates(device: torch.device) -> None:
    loss = SNCALoss(3, 4, torch.tensor([0, 1, 2])).to(device)
    emb = torch.randn(1, 4, device=device, requires_grad=True)
    out = loss(emb, torch.tensor([1], device=device), torch.tensor([1], device=device))
    out.backward()
    assert out.item() == 0.0 and torch.equal(emb.grad, torch.zeros_like(emb))


def test_memory_is_unit_norm_buffers_and_state_dict() -> None:
    torch.manual_seed(3)
    loss = SNCALoss(20, 8, torch.arange(20) % 4)
    torch.testing.assert_close(loss.memory.norm(dim=1), torch.ones(20))
    for _ in range(5):
        idx = torch.randperm(20)[:6]
        loss(torch.randn(6, 8), loss.labels[idx], idx)
    torch.testing.assert_close(loss.memory.norm(dim=1), torch.ones(20))
    assert set(loss.state_dict()) == {"memory", "labels"}
    loss64 = loss.to(torch.float64)
    assert loss64.memory.dtype == torch.float64 and loss64.labels.dtype == torch.long


def test_rejects_inconsistent_inputs() -> None:
    loss = SNCALoss(4, 3, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="labels disagree"):
        loss(torch.randn(2, 3), torch.tensor([1, 1]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="indices"):
        loss(torch.randn(2, 3), torch.tensor([0, 0]), torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="shape"):
        loss.reset_memory(torch.randn(3, 3))
    with pytest.raises(ValueError, match="momentum"):
        SNCALoss(4, 3, torch.tensor([0, 0, 1, 1]), momentum=1.0)


def test_autocast_bfloat16_computes_in_float32() -> None:
    g, labels, memory = _setup(seed=4)
    loss = SNCALoss(12, 5, labels)
    loss.reset_memory(memory)
    emb = torch.randn(4, 5, generator=g).bfloat16()
    idx = torch.tensor([0, 1, 2, 3])
    ref = _loop_reference(emb.double(), labels[idx], idx, memory.double(), labels, 0.05)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = loss(emb, labels[idx], idx)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref, rel=1e-4)
    assert loss.memory.dtype == torch.float32


def test_adam_on_free_embeddings_decreases_loss() -> None:
    torch.manual_seed(5)
    n = 24
    labels = torch.arange(n) % 4
    emb = torch.randn(n, 8, requires_grad=True)
    loss = SNCALoss(n, 8, labels, temperature=0.1)
    loss.reset_memory(emb.detach())
    opt = torch.optim.Adam([emb], lr=0.05)
    losses = []
    for step in range(40):
        idx = torch.arange(n) if step == 0 or step == 39 else torch.randperm(n)[:8]
        opt.zero_grad()
        out = loss(emb[idx], labels[idx], idx)
        out.backward()
        opt.step()
        losses.append(out.item())
    assert losses[-1] < 0.5 * losses[0]
