"""Fixtures for the evaluation tests: a small fake run folder for the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rsdml.evaluation.suite import write_evaluation

CLASSES = ["airport", "beach", "forest", "river"]


def make_fake_run(root: Path, *, n_per_class: int = 12, spectrum: bool = True,
                  images: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = root / "data"
    run = root / "run"
    run.mkdir(parents=True)
    paths, labels, roles = [], [], []
    for c, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            rel = f"{name}/{name}_{i}.png"
            if images:
                pixel = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
                pixel[..., c % 3] = 200
                Image.fromarray(pixel).save(data / rel)
            paths.append(rel)
            labels.append(c)
            roles.append(("labeled", "test", "test", "unlabeled")[i % 4])
    labels = np.array(labels)
    centres = rng.standard_normal((len(CLASSES), 16))
    emb = (centres[labels] + 0.7 * rng.standard_normal((len(labels), 16))).astype(np.float32)
    cfg = {"data": str(data), "out": str(run), "method": "hr-s2dml", "backbone": "resnet18",
           "epochs": 3, "seed": seed}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "class_names.json").write_text(json.dumps(CLASSES))
    with open(run / "metrics.jsonl", "w") as f:
        for epoch in range(1, 4):
            row = {"epoch": epoch, "step": 10 * epoch, "loss_total": 3.0 / epoch,
                   "loss_nsm": 2.5 / epoch, "loss_hr": -0.1 * epoch, "knn_acc": 0.5 + 0.1 * epoch,
                   "seconds": 1.0}
            f.write(json.dumps(row) + "\n")
        f.write('{"epoch": 4, "loss_tot')  # a line cut by a crash
    if spectrum:
        k = len(CLASSES)
        (run / "spectrum.json").write_text(json.dumps(
            {"start": list(np.linspace(3, 0.1, k)), "start_step": 0,
             "end": list(np.linspace(3, 2, k)), "end_step": 30}))
    write_evaluation(run / "eval", emb, labels, np.array(roles), paths, CLASSES)
    return run


@pytest.fixture
def fake_run(tmp_path):
    """Factory: fake_run(**options) -> run folder with every input the report reads."""
    count = iter(range(100))

    def make(**kw):
        return make_fake_run(tmp_path / f"case{next(count)}", **kw)

    return make


@pytest.fixture(scope="session")
def full_report(tmp_path_factory):
    """(run folder, report path) for a run with every input, built once per session."""
    from rsdml.evaluation.report import write_report

    run = make_fake_run(tmp_path_factory.mktemp("full"))
    return run, write_report(run)
