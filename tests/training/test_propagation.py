"""Label propagation: the sparse conjugate-gradient diffusion against a dense closed-form solve,
the term a consistency method adds, and a fast-mode run that uses it and resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from consistencyhelp import _method, _params, fast_views_cfg, straight_and_resumed

from rsdml.training.propagation import propagate


def _dense(x: np.ndarray, labeled: np.ndarray, labels: np.ndarray, c: int, k: int,
           gamma: float, alpha: float) -> np.ndarray:
    """The same diffusion written out densely: all pairs, a full sort, an exact inverse."""
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = z @ z.T
    np.fill_diagonal(s, -np.inf)
    w = np.zeros_like(s)
    for i in range(len(z)):
        nn = np.argsort(-s[i])[:k]
        w[i, nn] = np.maximum(s[i, nn], 0) ** gamma
    w = w + w.T
    d = 1 / np.sqrt(w.sum(1))
    y = np.zeros((len(z), c))
    counts = np.bincount(labels, minlength=c)
    y[labeled, labels] = 1 / counts[labels]
    return np.linalg.solve(np.eye(len(z)) - alpha * (d[:, None] * w * d[None, :]), y)


def test_propagation_equals_a_dense_closed_form_solve():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 6)) * 2
    y = np.repeat(np.arange(3), 20)
    x = (centres[y] + rng.normal(size=(60, 6))).astype(np.float32)
    labeled = np.array([0, 1, 20, 40])
    out = propagate(x, labeled, y[labeled], 3, k=8, gamma=3, alpha=0.9, iters=200)
    scores = np.maximum(_dense(x, labeled, y[labeled], 3, 8, 3, 0.9), 0)
    scores[labeled] = 0
    scores[labeled, y[labeled]] = 1
    p = scores / scores.sum(1, keepdims=True)
    assert np.array_equal(out.labels, p.argmax(1))
    ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(1)
    assert np.allclose(out.certainty, 1 - ent / np.log(3), atol=1e-4)
    assert (out.labels == y).mean() > 0.9  # the check means something: clusters are found
    freq = np.bincount(out.labels, minlength=3)
    assert np.allclose(out.class_weight, 60 / (3 * freq))


def test_a_class_with_more_seeds_does_not_win_by_count():
    # two tight groups, 5 seeds in one and 1 in the other: each group keeps its own class
    x = np.concatenate([np.tile([1.0, 0.0], (10, 1)), np.tile([0.0, 1.0], (10, 1))])
    x += np.random.default_rng(1).normal(scale=0.05, size=x.shape)
    out = propagate(x.astype(np.float32), np.array([0, 1, 2, 3, 4, 10]),
                    np.array([0, 0, 0, 0, 0, 1]), 2, k=5)
    assert out.labels.tolist() == [0] * 10 + [1] * 10


def test_the_propagation_term_by_hand():
    m = _method("hr-match", propagation_weight=2.0)
    m.set_ramp(0.5)
    m.set_propagated(torch.tensor([5, 7, 9]), torch.tensor([1, 2, 0]), torch.tensor([0.5, 1.0, 2.0]))
    assert m.lp_target.tolist() == [-1] * 5 + [1, -1, 2, -1, 0]
    s, w = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    emb, y = F.normalize(torch.randn(4, 8), dim=1), torch.tensor([0, 1, 2, 0])
    index_u = torch.tensor([7, 6, 5, 9])  # 6 has no propagated class: no term
    with_term = m(emb, y, torch.arange(4), s, w, index_u)
    logits = m.scaled_cosines(s)
    expected = (1.0 * F.cross_entropy(logits[0], torch.tensor(2))
                + 0.5 * F.cross_entropy(logits[2], torch.tensor(1))
                + 2.0 * F.cross_entropy(logits[3], torch.tensor(0))) / 4
    assert with_term["propagation"].item() == pytest.approx(expected.item(), rel=1e-5)
    without = m(emb, y, torch.arange(4), s, w)
    assert with_term["total"].item() == pytest.approx(
        without["total"].item() + 0.5 * 2.0 * expected.item(), rel=1e-5)
    # the propagated classes travel with the method's state into a fresh method
    fresh = _method("hr-match", propagation_weight=2.0)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.lp_target, m.lp_target) and torch.equal(fresh.lp_weight, m.lp_weight)


def test_the_propagation_margin_by_hand():
    """--propagation-margin m: the propagated class's logit is s cos(theta + m), written out
    with acos here; the other classes keep s cos(theta_j)."""
    m = _method("hr-match", propagation_weight=1.0, propagation_margin=0.4)
    m.set_ramp(1.0)
    m.set_propagated(torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([1.0, 0.5]))
    s = F.normalize(torch.randn(2, 8, dtype=torch.float64), dim=1)
    cos = (s @ F.normalize(m.nsm.weight.detach().double(), dim=1).T).clamp(-1, 1)
    scale = m.cfg.logit_scale_u
    expected = 0.0
    for row, (cls, weight) in enumerate([(2, 1.0), (0, 0.5)]):
        logits = scale * cos[row].clone()
        logits[cls] = scale * torch.cos(torch.acos(cos[row, cls]) + 0.4)
        expected += weight * F.cross_entropy(logits, torch.tensor(cls)).item()
    got = m.propagation_term(s, torch.tensor([0, 1])).item()
    assert got == pytest.approx(expected / 2, rel=1e-6)
    plain = _method("hr-match", propagation_weight=1.0)
    plain.load_state_dict(m.state_dict())
    assert plain.propagation_term(s, torch.tensor([0, 1])).item() < got  # the margin costs


def test_fast_mode_with_propagation_logs_its_term_and_resumes_exactly(tiny_scenes, tmp_path,
                                                                        monkeypatch):
    straight, resumed, log = straight_and_resumed(
        monkeypatch, tmp_path, lambda out: fast_views_cfg(tiny_scenes, out, propagation_weight=1.0))
    assert all(row["loss_propagation"] > 0 for row in log)  # stopped after a refresh
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys() and "method.lp_target" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_propagation_every_n_epochs_runs_at_those_epochs_and_resumes_exactly(
        tiny_scenes, tmp_path, monkeypatch):
    """--propagation-every 2 over 4 epochs: the labels are diffused at the start of epochs 0
    and 2 only; a run stopped in epoch 1 and resumed keeps epoch 0's and matches the straight
    run bit for bit."""
    from rsdml.training.trainer import Trainer

    epochs: list[int] = []
    original = Trainer.propagate

    def counted(self):
        epochs.append(self.epoch)
        return original(self)

    monkeypatch.setattr(Trainer, "propagate", counted)

    def cfg(out):
        return fast_views_cfg(tiny_scenes, out, propagation_weight=1.0,
                              propagation_every=2).replace(epochs=4)

    straight, resumed, log = straight_and_resumed(monkeypatch, tmp_path, cfg)
    assert epochs == [0, 2, 0, 2]  # straight; stopped in epoch 1, resumed: no refresh before 2
    assert len(log) == 4 and all(row["loss_propagation"] > 0 for row in log)
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys() and "method.lp_target" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
