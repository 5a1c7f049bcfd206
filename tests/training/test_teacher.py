"""The EMA teacher of the consistency methods (--teacher-ema): its update by hand, the weak
view's pseudo-labels from the teacher, and a run that resumes exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from consistencyhelp import _method, _params, fast_views_cfg, straight_and_resumed

from rsdml.errors import RsdmlError
from rsdml.training.checkpoint import load_checkpoint
from rsdml.training.teacher import EmaTeacher


def test_ema_teacher_update_by_hand():
    student = torch.nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]]))
        student.bias.fill_(0.0)
    teacher = EmaTeacher(student, 0.9)
    student.bias.requires_grad_(False)  # frozen: the teacher's copy must not move
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[3.0, -2.0]]))
        student.bias.fill_(5.0)
    teacher.update(student)
    # 0.9 * (1, 2) + 0.1 * (3, -2) = (1.2, 1.6)
    assert teacher.network.weight.tolist() == [pytest.approx([1.2, 1.6])]
    assert teacher.network.bias.item() == 0.0
    assert not any(p.requires_grad for p in teacher.network.parameters())
    with pytest.raises(ValueError, match="momentum"):
        EmaTeacher(student, 1.0)


def test_batchnorm_statistics_follow_the_student_where_it_trains_them():
    """A module in training mode updates its statistics: the teacher copies them. One in eval
    mode (a frozen trunk) keeps its own, and the teacher's stay equal without a copy."""
    student = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3))
    teacher = EmaTeacher(student, 0.9)
    student.train()
    student[1].eval()
    student(torch.randn(8, 3) + 4.0)
    teacher.update(student)
    assert torch.equal(teacher.network[0].running_mean, student[0].running_mean)
    assert teacher.network[0].running_mean.abs().sum() > 0  # it did change
    assert torch.equal(teacher.network[1].running_mean, student[1].running_mean)
    with torch.no_grad():  # changed outside training: not the teacher's business
        student[1].running_mean.fill_(7.0)
    teacher.update(student)
    assert not teacher.network[1].running_mean.any()


def test_the_weak_view_is_scored_by_the_teacher_classifier():
    m = _method("fixmatch", teacher_ema=0.5)
    emb = F.normalize(torch.randn(5, 8), dim=1)
    before = m.weak_proba(emb)
    assert torch.allclose(before, m.predict_proba(emb), atol=1e-6)  # teacher = student at start
    w0 = m.nsm.weight.detach().clone()
    with torch.no_grad():
        m.nsm.weight.add_(torch.randn_like(m.nsm.weight))
    assert torch.equal(m.weak_proba(emb), before)  # the student moved, the teacher did not
    m.update_teacher()
    assert torch.allclose(m.teacher_weight, 0.5 * w0 + 0.5 * m.nsm.weight.detach())
    assert not torch.allclose(m.weak_proba(emb), before)
    plain = _method("fixmatch")
    assert plain.teacher_momentum == 0.0 and "teacher_weight" not in plain.state_dict()


def test_a_teacher_with_the_weak_view_under_a_graph_is_refused():
    with pytest.raises(RsdmlError, match="--teacher-ema needs --hr-view strong"):
        _method("hr-match", teacher_ema=0.9, hr_view="weak")


def test_fast_mode_with_a_teacher_resumes_exactly(tiny_scenes, tmp_path, monkeypatch):
    straight, resumed, _ = straight_and_resumed(
        monkeypatch, tmp_path, lambda out: fast_views_cfg(tiny_scenes, out, teacher_ema=0.9))
    state = load_checkpoint(straight / "checkpoints" / "last.pt")
    teacher, student = state["teacher"], state["model"]
    assert teacher.keys() == student.keys()
    moved = [k for k in student if student[k].is_floating_point()
             and not torch.equal(student[k], teacher[k])]
    assert moved and all(k.startswith("head") for k in moved), moved  # the trunk is frozen
    a, b = _params(straight), _params(resumed)
    assert "method.teacher_weight" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    t2 = load_checkpoint(resumed / "checkpoints" / "last.pt")["teacher"]
    for k in teacher:
        assert torch.equal(teacher[k], t2[k]), k
