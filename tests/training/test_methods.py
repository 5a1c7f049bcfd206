"""Every registered method: a uniform interface, and its loss goes down on separable data."""

import pytest
import torch

from rsdml.config import TrainConfig
from rsdml.training.methods.registry import METHODS, create_method


def _data(n_per=16, classes=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per)
    feats = centres[labels] + 0.5 * torch.randn(len(labels), dim, generator=g)
    return feats, labels


@pytest.mark.parametrize("name", sorted(n for n, c in METHODS.items() if not c.uses_views))
def test_method_loss_decreases(name):  # the view methods: tests/training/test_consistency.py
    torch.manual_seed(0)
    cfg = TrainConfig(method=name, embedding_dim=8)
    feats, labels = _data()
    unl = _data(seed=1)[0]
    head = torch.nn.Linear(feats.shape[1], 8)
    method = create_method(cfg, 4, labels)
    opt = torch.optim.SGD(list(head.parameters()) + list(method.parameters()), lr=0.05, momentum=0.9)
    index = torch.arange(len(labels))

    def loss():
        e = torch.nn.functional.normalize(head(feats), dim=1)
        eu = torch.nn.functional.normalize(head(unl), dim=1) if method.uses_unlabeled else None
        terms = method(e, labels, index, eu)
        assert "total" in terms and terms["total"].ndim == 0
        return terms["total"]

    first = float(loss().detach())
    for _ in range(40):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < first - 1e-3


def test_hr_s2dml_total_is_nsm_plus_weighted_bnm():
    cfg = TrainConfig(method="hr-s2dml", embedding_dim=8, bnm_weight=0.7)
    labels = torch.tensor([0, 1, 2, 0])
    method = create_method(cfg, 3, labels)
    e = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    eu = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    t = method(e, labels, torch.arange(4), eu)
    p = (20.0 * method.nsm.cosines(eu)).softmax(1)  # s = 1/tau = 20
    expected_hr = -torch.linalg.svdvals(p).mean()
    assert torch.allclose(t["hr"], expected_hr, atol=1e-6)
    assert torch.allclose(t["total"], t["nsm"] + 0.7 * expected_hr, atol=1e-6)


def test_unlabelled_methods_use_only_embeddings_of_the_unlabelled_batch():
    """The method signature has no slot for unlabelled labels: they cannot reach the loss."""
    import inspect

    for cls in METHODS.values():
        params = list(inspect.signature(cls.forward).parameters)
        # the weak view's embeddings and the unlabelled images' positions (where their
        # propagated classes, made from the labelled images only, are looked up): no labels
        views = ["emb_w", "index_u"] if cls.uses_views else []
        assert params == ["self", "emb_l", "labels_l", "index_l", "emb_u", *views]


def test_triplet_batches_are_class_balanced():
    from rsdml.training.methods.triplet import Triplet

    labels = torch.arange(10).repeat_interleave(9)
    m = Triplet(TrainConfig(method="triplet"), 10, labels)
    batches = m.labeled_batches(labels, 32, torch.Generator().manual_seed(0))
    for b in batches:
        counts = torch.bincount(labels[b])
        assert set(counts[counts > 0].tolist()) == {4}
