"""rsdml tune: folds of the labelled images only; test labels never reach a fold run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from rsdml.data.split import Split, make_split
from rsdml.errors import RsdmlError
from rsdml.training.tune import fold_split, run_tune


def _split(protocol: str = "transductive", n_per_class: int = 20, classes: int = 3,
           frac: float = 0.3) -> Split:
    labels = np.repeat(np.arange(classes), n_per_class)
    paths = [f"c{y}/img{i:03d}.png" for i, y in enumerate(labels)]
    return make_split(paths, labels, [f"c{c}" for c in range(classes)], protocol=protocol,
                      labeled_fraction=frac, val_fraction=0.1, test_fraction=0.2, seed=1)


def _scrambled(split: Split, seed: int = 0) -> Split:
    """The same split with the labels of every non-labelled image permuted."""
    labels = split.labels.copy()
    other = np.flatnonzero(split.roles != "labeled")
    labels[other] = np.random.default_rng(seed).permutation(labels[other])
    assert (labels != split.labels).any()
    return Split(split.protocol, split.classes, split.paths, labels, split.roles)


@pytest.mark.parametrize("protocol", ["transductive", "inductive"])
def test_fold_splits_do_not_depend_on_test_labels(protocol):
    split = _split(protocol)
    for k in range(3):
        a, b = fold_split(split, 3, k, seed=0), fold_split(_scrambled(split), 3, k, seed=0)
        assert a.paths == b.paths
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.roles, b.roles)


@pytest.mark.parametrize("protocol", ["transductive", "inductive"])
def test_fold_split_roles_and_pixels(protocol):
    split = _split(protocol)
    labeled = {split.paths[i] for i in split.index("labeled")}
    pool = {split.paths[i] for i in split.unlabeled_index()}
    held_total: list[str] = []
    for k in range(3):
        f = fold_split(split, 3, k, seed=0)
        assert f.protocol == "inductive"
        roles = dict(zip(f.paths, f.roles))
        held = {p for p, r in roles.items() if r == "test"}
        assert held and held <= labeled  # the fold's test images are labelled images
        assert {p for p, r in roles.items() if r == "labeled"} == labeled - held
        assert {p for p, r in roles.items() if r == "unlabeled"} == pool
        assert set(f.paths) == labeled | pool  # inductive val/test images: not even pixels
        assert (f.labels[f.roles == "unlabeled"] == 0).all()  # the pool's labels are gone
        held_total += sorted(held)
    assert sorted(held_total) == sorted(labeled)  # K-fold: each labelled image held out once


def test_one_held_out_part_is_stratified():
    split = _split(n_per_class=40, frac=0.5)  # 20 labelled per class
    f = fold_split(split, 1, 0, seed=0, holdout=0.25)
    held = f.labels[f.roles == "test"]
    assert np.bincount(held).tolist() == [5, 5, 5]


def test_a_class_with_one_labelled_image_keeps_it_for_training():
    split = _split(n_per_class=5, frac=0.2)  # 1 labelled image per class
    with pytest.raises(RsdmlError, match="too few labelled"):
        fold_split(split, 2, 0, seed=0)


def test_tune_end_to_end_picks_and_resumes(tiny_scenes, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "base": {"data": str(tiny_scenes), "backbone": "resnet18", "pretrained": "none",
                 "image_size": 32, "epochs": 1, "batch_size": 8, "unlabeled_batch_size": 8,
                 "labeled_fraction": 0.5, "device": "cpu", "head_warmup_epochs": 0.5},
        "grid": {"lr": [0.001, 0.003]}}))
    out = tmp_path / "tune"
    lines: list[str] = []
    result = run_tune(grid, out, folds=2, overrides={"quiet": True}, echo=lines.append)
    assert len(result.rows) == 2 and all(len(r["folds"]) == 2 for r in result.rows)
    best = max(result.rows, key=lambda r: r["heldout_knn_acc"])
    assert result.best["lr"] == best["lr"]
    chosen = yaml.safe_load(result.best_config.read_text())
    assert chosen["lr"] == best["lr"] and "split" not in chosen and "out" not in chosen
    assert "held-out kNN acc" in result.table.read_text()
    saved = json.loads((out / "tune.json").read_text())
    assert saved["best"]["lr"] == best["lr"]
    # every fold run saw only the labelled images as labels: its split says so
    for run in (out / "runs").rglob("fold*of2"):
        rows = (run / "split.csv").read_text().splitlines()[1:]
        assert {r.rsplit(",", 1)[1] for r in rows} == {"labeled", "unlabeled", "test"}
    lines.clear()
    again = run_tune(grid, out, folds=2, overrides={"quiet": True}, echo=lines.append)
    assert again.rows == result.rows
    assert not any(line.startswith("[tune") for line in lines)  # nothing trained again
