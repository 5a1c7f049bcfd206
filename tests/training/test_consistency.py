"""FixMatch / FreeMatch / HR-Match: the pseudo-label loss against a plain loop, FreeMatch's
thresholds against hand-computed values, and the methods end to end on tiny scenes (two views,
statistics in the logs, exact resume, fast mode on cached views)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from consistencyhelp import _cfg, _method, _params, interrupted_at

from rsdml.config import TrainConfig
from rsdml.losses.pseudo_label import PseudoLabelLoss, SelfAdaptiveThreshold
from rsdml.training.checkpoint import load_checkpoint
from rsdml.training.methods.registry import check_method, create_method
from rsdml.training.runner import train


def test_pseudo_label_loss_equals_a_plain_loop():
    torch.manual_seed(0)
    logits = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    probs = torch.randn(9, 4, dtype=torch.float64).mul(3).softmax(1)
    loss, mask, target = PseudoLabelLoss()(logits, probs, 0.7)
    total = 0.0
    for b in range(9):
        conf, c = probs[b].max(0)
        assert bool(mask[b]) == bool(conf >= 0.7) and int(target[b]) == int(c)
        if conf >= 0.7:
            total += -torch.log_softmax(logits[b], 0)[c]
    assert 0 < int(mask.sum()) < 9  # the check means something: some rows in, some out
    assert loss.detach().item() == pytest.approx(float(total) / 9, rel=1e-12)
    loss.backward()
    assert logits.grad is not None and logits.grad[~mask].abs().sum() == 0  # rejected: no gradient


def test_pseudo_label_loss_takes_one_threshold_per_class():
    probs = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    _, mask, _ = PseudoLabelLoss()(torch.zeros(3, 2), probs, torch.tensor([0.58, 0.9]))
    assert mask.tolist() == [True, False, False]


def test_self_adaptive_threshold_by_hand():
    t = SelfAdaptiveThreshold(num_classes=2, momentum=0.5)
    assert t.thresholds().tolist() == pytest.approx([0.5, 0.5])  # tau = 1/C, p uniform
    t.update(torch.tensor([[0.9, 0.1], [0.7, 0.3]]))
    # tau = 0.5 * 0.5 + 0.5 * mean(0.9, 0.7) = 0.65; p = 0.5 * 0.5 + 0.5 * (0.8, 0.2) = (0.65, 0.35)
    assert float(t.tau) == pytest.approx(0.65)
    assert t.thresholds().tolist() == pytest.approx([0.65, 0.65 * 0.35 / 0.65])


def test_fixmatch_terms_and_statistics():
    m = _method("fixmatch", threshold=0.5)
    m.set_ramp(0.5)
    emb = F.normalize(torch.randn(4, 8), dim=1)
    weak = F.normalize(m.nsm.weight.detach()[[0, 1, 2, 0]] + 0.01, dim=1)  # confident
    strong = F.normalize(torch.randn(4, 8), dim=1)
    terms = m(emb, torch.tensor([0, 1, 2, 0]), torch.arange(4), strong, weak)
    assert terms["mask_rate"].item() == 1.0
    expected = F.cross_entropy(m.scaled_cosines(strong), torch.tensor([0, 1, 2, 0]))
    assert terms["consistency"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["total"].item() == pytest.approx(terms["nsm"].item() + 0.5 * expected.item(), rel=1e-5)
    assert m.epoch_stats() == {"pseudo_label_hist": [2, 1, 1]}
    assert m.epoch_stats() == {"pseudo_label_hist": [0, 0, 0]}  # reset each epoch


def test_hr_match_adds_the_nuclear_norm_of_the_chosen_view():
    for view, needs in (("strong", False), ("weak", True)):
        m = _method("hr-match", hr_view=view)
        assert m.weak_needs_grad is needs
        s, w = F.normalize(torch.randn(5, 8), dim=1), F.normalize(torch.randn(5, 8), dim=1)
        terms = m(F.normalize(torch.randn(4, 8), dim=1), torch.tensor([0, 1, 2, 0]),
                  torch.arange(4), s, w)
        p = m.predict_proba(s if view == "strong" else w)
        assert terms["hr"].item() == pytest.approx(-torch.linalg.svdvals(p).mean().item(), rel=1e-5)


def test_consistency_run_logs_views_statistics_and_resumes_exactly(tiny_scenes, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(_cfg(tiny_scenes, straight, report=True))
    assert (straight / "eval" / "pseudo_labels.png").is_file()
    assert "Pseudo-labels" in (straight / "eval" / "report.html").read_text()
    log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    # an epoch is a pass over the unlabelled pool, not over the 12 labelled images
    split = (straight / "split.csv").read_text().splitlines()[1:]
    n_unl = sum(1 for r in split if r.endswith(",test"))
    assert log[-1]["step"] == 2 * math.ceil(n_unl / 8) > 2 * math.ceil(12 / 8)
    for row in log:
        assert 0.0 <= row["mask_rate"] <= 1.0 and "loss_consistency" in row and "loss_hr" in row
        assert len(row["pseudo_label_hist"]) == 4
    assert sum(log[-1]["pseudo_label_hist"]) > 0  # threshold 0.3: some pseudo-labels accepted
    metrics = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert {"clf_acc", "pl_mask_rate"} <= metrics[-1].keys()
    # interrupted mid-epoch 2 and resumed: the same weights and method state (histogram)
    resumed = tmp_path / "resumed"
    stop_at = log[0]["step"] + 1
    interrupted_at(monkeypatch, stop_at, lambda: train(_cfg(tiny_scenes, resumed)))
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["global_step"] == stop_at + 1
    train(TrainConfig(), resume=resumed, overrides={})
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (straight / "train_log.jsonl").read_text() != ""
    tail = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert tail[-1]["pseudo_label_hist"] == log[-1]["pseudo_label_hist"]


def test_freematch_state_is_checkpointed(tiny_scenes, tmp_path):
    run = tmp_path / "fm"
    train(_cfg(tiny_scenes, run, method="freematch", epochs=1, eval_every=5)
          .replace(method_params={}))  # freematch has no --threshold
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert float(state["method"]["adaptive.tau"]) > 1 / 4  # moved from 1/C


def test_view_methods_train_in_fast_mode_on_cached_views(tiny_scenes, tmp_path, monkeypatch):
    """Fast mode runs the view methods on cached views; a resumed run replays them exactly."""
    import rsdml.training.views as views

    kw = dict(method="fixmatch", freeze_backbone=True, view_weak=4, view_strong=2, view_stages=1)
    straight = tmp_path / "fast"
    train(_cfg(tiny_scenes, straight, **kw))
    saved = (straight / "config.yaml").read_text()
    assert "view_stages: 1" in saved and "view_weak: 4" in saved
    log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert all(0.0 <= row["mask_rate"] <= 1.0 for row in log)
    built = []
    monkeypatch.setattr(views, "_build", lambda *a, **k: built.append(a))
    again = tmp_path / "again"
    train(_cfg(tiny_scenes, again, **kw))  # the views come from the cache: nothing is built
    assert built == []
    assert _params(straight).keys() == _params(again).keys()
    for k, v in _params(straight).items():
        assert torch.equal(v, _params(again)[k]), k


def test_distribution_alignment_by_hand():
    cfg = check_method(TrainConfig(method="fixmatch").replace(
        method_params={"distribution_alignment": True}))
    m = create_method(cfg, 2, torch.tensor([0, 0, 0, 1]))  # labelled prior (0.75, 0.25)
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    out = m.align(q)
    p_model = 0.99 * torch.tensor([0.75, 0.25]) + 0.01 * torch.tensor([0.5, 0.5])
    expected = q * torch.tensor([0.75, 0.25]) / p_model
    expected = expected / expected.sum(1, keepdim=True)
    assert torch.allclose(m.p_model, p_model) and torch.allclose(out, expected)
    assert torch.allclose(out.sum(1), torch.ones(2))


def test_partial_fine_tuning_trains_only_the_last_stages(tiny_scenes, tmp_path):
    """--train-stages 1: layer4 of the trunk and the head train on cached activations; the
    stages below keep their weights; evaluation embeds through the trained stage."""
    run = tmp_path / "partial"
    result = train(_cfg(tiny_scenes, run, freeze_backbone=True, train_stages=1, epochs=2,
                        head_warmup_epochs=0.0))
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    torch.manual_seed(0)
    from rsdml.models.resnet import resnet18

    start = resnet18(False).state_dict()
    changed = {k for k, v in start.items() if not torch.equal(v, state[f"trunk.{k}"])}
    assert changed and all(k.startswith("layer4.") for k in changed)
    assert any(k.endswith("conv1.weight") for k in changed)
    assert 0.0 <= result["knn_acc"] <= 1.0


def test_fairness_loss_by_hand():
    from rsdml.losses.pseudo_label import fairness_loss

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]],
                          dtype=torch.float64)
    mask = torch.tensor([True, True, True, False])
    p_model = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    label_hist = torch.tensor([0.6, 0.4, 0.0], dtype=torch.float64)
    # by hand: accepted rows 0-2; their top classes 0, 1, 0 -> hist_s = (2/3, 1/3, 0)
    rows = [[math.exp(v) for v in r] for r in logits[:3].tolist()]
    probs = [[v / sum(r) for v in r] for r in rows]
    mean = [sum(p[c] for p in probs) / 3 for c in range(3)]
    b = [mean[0] / (2 / 3), mean[1] / (1 / 3), 0.0]
    b = [v / sum(b) for v in b]
    a = [0.5 / 0.6, 0.3 / 0.4, 0.0]
    a = [v / sum(a) for v in a]
    expected = sum(x * math.log(y + 1e-12) for x, y in zip(a, b))
    got = fairness_loss(logits, mask, p_model, label_hist)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    none = fairness_loss(logits.requires_grad_(), torch.zeros(4, dtype=torch.bool), p_model, label_hist)
    assert none.item() == 0.0


def test_freematch_tracks_the_top_class_histogram_and_adds_fairness():
    t = SelfAdaptiveThreshold(num_classes=2, momentum=0.5)
    t.update(torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]]))
    assert t.hist.tolist() == pytest.approx([0.5 * 0.5 + 0.5 * 2 / 3, 0.5 * 0.5 + 0.5 / 3])
    old = {k: v for k, v in t.state_dict().items() if k != "hist"}  # a checkpoint from before
    SelfAdaptiveThreshold(num_classes=2).load_state_dict(old)
    m = _method("freematch", fairness_weight=0.01)
    emb = F.normalize(torch.randn(4, 8), dim=1)
    weak = F.normalize(m.nsm.weight.detach()[[0, 1, 2, 0]] + 0.01, dim=1)
    terms = m(emb, torch.tensor([0, 1, 2, 0]), torch.arange(4), emb, weak)
    assert "fairness" in terms and torch.isfinite(terms["fairness"])
    base = terms["nsm"] + terms["consistency"] + 0.01 * terms["fairness"]
    assert terms["total"].item() == pytest.approx(base.item(), rel=1e-5)
    assert "fairness" not in _method("freematch")(emb, torch.tensor([0, 1, 2, 0]),
                                                  torch.arange(4), emb, weak)
