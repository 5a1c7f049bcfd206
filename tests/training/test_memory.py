"""The memory check before the first step, and the per-device default image size."""

from __future__ import annotations

import re

import pytest
import torch

from rsdml.cli.main import main
from rsdml.config import TrainConfig
from rsdml.errors import RsdmlError
from rsdml.models.embedding import build_model
from rsdml.training import memory
from rsdml.training.runner import DEFAULT_IMAGE_SIZE, FAST_CPU_IMAGE_SIZE, validate_config

TINY = ["--backbone", "resnet18", "--pretrained", "none", "--batch-size", "8",
        "--unlabeled-batch-size", "8", "--epochs", "1", "--device", "cpu", "--quiet",
        "--eval-batch-size", "64", "--no-report"]
CPU = torch.device("cpu")


def _model(size: int = 64) -> torch.nn.Module:
    return build_model(TrainConfig(backbone="resnet18", pretrained="none", image_size=size))


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_a_step_too_large_stops_with_settings_that_fit(tiny_scenes, tmp_path, capsys,
                                                       monkeypatch):
    base = TrainConfig(backbone="resnet18", pretrained="none", image_size=64, batch_size=8,
                       unlabeled_batch_size=8)
    model = _model()
    trainable = sum(p.numel() * p.element_size() for p in model.parameters())
    est = memory.estimate(base, model, CPU, None, True, memory.step_images(base, True), trainable)
    # A machine with room for the weights' state and half of the step's activations.
    avail = int((est.fixed + 0.5 * est.need - 0.5 * est.fixed) / memory.USABLE)
    monkeypatch.setattr(memory, "available_memory", lambda device: avail)
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    out = tmp_path / "run"
    code, _, err = _cli(["train", "--data", str(tiny_scenes), "--out", str(out),
                         "--image-size", "64", *TINY], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--image-size 64 with 16 images per step" in err and memory.SKIP_ENV in err
    assert not out.exists()  # nothing left that blocks the retry
    size = int(re.search(r"use --image-size (\d+)", err).group(1))
    batch = int(re.search(r"--batch-size (\d+) --unlabeled-batch-size (\d+)", err).group(1))
    assert size < 64 and batch < 8
    for fix in ({"image_size": size}, {"batch_size": batch, "unlabeled_batch_size": batch}):
        cfg = base.replace(**fix)
        assert memory.check_memory(cfg, model, CPU, None, True,
                                   memory.step_images(cfg, True)) is not None  # it fits


def test_the_check_is_skippable_and_skipped_in_fast_mode(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 1)
    cfg = TrainConfig(backbone="resnet18", pretrained="none", image_size=64)
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    with pytest.raises(RsdmlError, match="one training step needs about"):
        memory.check_memory(cfg, _model(), CPU, None, True, 16)
    assert memory.check_memory(cfg.replace(freeze_backbone=True), _model(), CPU, None, True,
                               16) is None
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    assert memory.check_memory(cfg, _model(), CPU, None, True, 16) is None


def test_the_probe_scales_with_the_area_and_changes_nothing():
    """(Its cost is timed in benchmarks/bench_memory_probe.py: no test asserts wall time.)"""
    model = _model()
    model.train()
    model.trunk.eval()  # a mix of modes, as during the head warm-up
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    small = memory.activation_bytes(model, 32, CPU, None, True)
    large = memory.activation_bytes(model, 64, CPU, None, True)
    assert 3.0 < large / small < 5.0  # activations grow with the image area
    assert large > 2 * 3 * 64 * 64 * 4  # at least the input images themselves
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == modes
    assert not any(p.requires_grad for p in model.trunk.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_estimate_covers_a_measured_step():
    """The estimate is not below what one real forward+backward keeps for the backward."""
    model = _model()
    est = memory.estimate(TrainConfig(backbone="resnet18", image_size=64, batch_size=4,
                                      unlabeled_batch_size=4), model, CPU, None, True, 8, 0)
    saved: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    x = torch.rand(8, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    assert est.per_image * 8 >= sum(saved.values())


def test_the_default_image_size_depends_on_the_device():
    assert TrainConfig().image_size is None
    assert validate_config(TrainConfig(device="cpu", freeze_backbone=False)).image_size \
        == DEFAULT_IMAGE_SIZE["cpu"] == 128
    # fast mode on a CPU (the default there with a pretrained trunk) reads 150 px
    assert validate_config(TrainConfig(device="cpu")).freeze_backbone
    assert validate_config(TrainConfig(device="cpu")).image_size == FAST_CPU_IMAGE_SIZE == 150
    assert validate_config(TrainConfig(device="cpu", image_size=256)).image_size == 256
    assert DEFAULT_IMAGE_SIZE["cuda"] == 256


def test_the_memory_check_counts_the_images_the_method_runs_with_a_graph():
    """Issue 25, defect 7: --hr-view weak runs B + 2U images with a graph a step; the check
    counted B + U."""
    import torch as _torch

    from rsdml.training.methods.registry import check_method, create_method

    labels = _torch.tensor([0, 1, 2, 3])
    base = TrainConfig(batch_size=8, unlabeled_batch_size=16)
    counts = {}
    for method, extra in (("hr-s2dml", {}), ("triplet", {}), ("fixmatch", {}),
                          ("hr-match", {}), ("hr-match", {"hr_view": "weak"})):
        cfg = check_method(base.replace(method=method, method_params=extra))
        counts[(method, tuple(extra.values()))] = create_method(cfg, 4, labels).graph_images()
    assert counts[("hr-match", ("weak",))] == 8 + 2 * 16
    assert counts[("hr-match", ())] == counts[("fixmatch", ())] == 8 + 16
    assert counts[("hr-s2dml", ())] == 8 + 16


def test_kept_memory_raises_the_estimate_on_a_cpu(monkeypatch):
    """With the allocator keeping freed memory in the passes, activations count 1.25x."""
    from rsdml import allocator

    model = _model()
    cfg = TrainConfig(backbone="resnet18", image_size=64, batch_size=4, unlabeled_batch_size=4)
    plain = memory.estimate(cfg, model, CPU, None, True, 8, 0)
    monkeypatch.setattr(allocator, "_libc", object())
    kept = memory.estimate(cfg, model, CPU, None, True, 8, 0)
    assert kept.per_image == pytest.approx(memory.KEPT_FACTOR * plain.per_image, abs=2)
