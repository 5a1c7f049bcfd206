"""A short run on a subset of the real AID data set (skipped where ../shared/data/AID is absent)."""

from __future__ import annotations

import json

import numpy as np

from rsdml.config import TrainConfig
from rsdml.data.scan import scan_image_folder
from rsdml.data.split import make_split, write_split_csv
from rsdml.training.runner import train


def test_short_run_on_aid_subset_beats_chance(aid_root, tmp_path):
    scan = scan_image_folder(aid_root, progress=False)
    keep_classes = [0, 5, 10, 15, 20]  # 5 classes -> chance 0.2
    rows = [i for i, y in enumerate(scan.labels) if y in keep_classes]
    rows = [
        i for c in keep_classes for i in [j for j in rows if scan.labels[j] == c][:24]
    ]
    remap = {c: k for k, c in enumerate(keep_classes)}
    split = make_split([scan.paths[i] for i in rows], np.array([remap[int(scan.labels[i])] for i in rows]),
                       [scan.classes[c] for c in keep_classes], labeled_fraction=0.25, seed=0)
    split_file = tmp_path / "split.csv"
    write_split_csv(split, split_file)
    run = tmp_path / "run"
    result = train(TrainConfig(
        data=str(aid_root), split=str(split_file), labeled_fraction=0.25, out=str(run),
        pretrained="none", image_size=48,
        epochs=3, batch_size=16, unlabeled_batch_size=16, lr=0.01, eval_every=1, device="cpu",
        quiet=True, eval_batch_size=128, report=False, epoch_unit="labeled",
    ))
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and all("knn_acc" in r for r in rows)
    assert result["knn_acc"] > 0.2
