"""rsdml tune: folds of the labelled images only; test labels never reach a fold run."""

from __future__ import annotations

import json
from pathlib import Path

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


class FoldFake:
    """Stands in for runner.train in tune: writes the files tune reads. Held-out accuracy:
    lr 0.001 is lucky on seed 1 only (0.5 / 0.9), lr 0.003 steady (0.75); +0.01 per epoch."""

    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, cfg, resume=None, overrides=None):
        self.calls.append(cfg)
        run = Path(cfg.out)
        run.mkdir(parents=True)
        cfg.save_yaml(run / "config.yaml")
        acc = (0.9 if cfg.seed == 1 else 0.5) if cfg.lr == 0.001 else 0.75
        acc += 0.01 * cfg.epochs
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": cfg.epochs, "knn_acc": acc}) + "\n")
        (run / "final_metrics.json").write_text(json.dumps({"knn_acc": acc}))
        return {"knn_acc": acc}


@pytest.fixture
def fold_fake(monkeypatch) -> FoldFake:
    import rsdml.training.experiment as ex

    f = FoldFake()
    monkeypatch.setattr(ex, "train", f)
    return f


def _tune_grid(path: Path, data: Path, epochs: int = 1, **axes) -> Path:
    path.write_text(yaml.safe_dump({
        "base": {"data": str(data), "epochs": epochs, "labeled_fraction": 0.5},
        "grid": axes or {"lr": [0.001, 0.003], "seed": [0, 1]}}))
    return path


def test_tune_averages_over_seeds_instead_of_choosing_one(tiny_scenes, tmp_path, fold_fake):
    grid = _tune_grid(tmp_path / "grid.yaml", tiny_scenes)
    result = run_tune(grid, tmp_path / "tune", folds=2, echo=lambda s: None)
    assert len(fold_fake.calls) == 8  # 2 lr x 2 seeds x 2 folds
    assert [r["lr"] for r in result.rows] == [0.001, 0.003] and "seed" not in result.rows[0]
    assert result.rows[0]["seeds"] == [0, 1] and len(result.rows[0]["folds"]) == 4
    assert result.rows[0]["heldout_knn_acc"] == pytest.approx(0.71)  # mean of 0.51 and 0.91
    assert result.best["lr"] == 0.003  # not "lr 0.001 with seed 1"
    chosen = yaml.safe_load(result.best_config.read_text())
    assert chosen["lr"] == 0.003 and "seed" not in chosen


def test_tune_trains_again_when_the_grid_or_holdout_changes(tiny_scenes, tmp_path, fold_fake):
    out = tmp_path / "tune"
    run_tune(_tune_grid(tmp_path / "g.yaml", tiny_scenes, lr=[0.003]), out, folds=2,
             echo=lambda s: None)
    assert len(fold_fake.calls) == 2
    again = run_tune(_tune_grid(tmp_path / "g.yaml", tiny_scenes, epochs=3, lr=[0.003]), out,
                     folds=2, echo=lambda s: None)
    assert len(fold_fake.calls) == 4  # the fold runs of 1 epoch are not reused for 3
    assert again.best["heldout_knn_acc"] == pytest.approx(0.78)
    assert yaml.safe_load(again.best_config.read_text())["epochs"] == 3
    run_tune(tmp_path / "g.yaml", out, folds=2, echo=lambda s: None)
    assert len(fold_fake.calls) == 4  # unchanged: resumed from the finished runs
    # --holdout names the one-part split and its runs
    run_tune(tmp_path / "g.yaml", out, folds=1, holdout=0.25, echo=lambda s: None)
    run_tune(tmp_path / "g.yaml", out, folds=1, holdout=0.5, echo=lambda s: None)
    assert len(fold_fake.calls) == 6
    splits = sorted(p.name for p in (out / "splits").glob("*fold1of1*.csv"))
    assert len(splits) == 2 and any("holdout0.5" in s for s in splits)


def test_tune_refuses_labeled_fraction_as_an_axis(tiny_scenes, tmp_path, fold_fake):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base": {"data": str(tiny_scenes)},
                                    "grid": {"labeled_fraction": [0.1, 0.5]}}))
    with pytest.raises(RsdmlError, match="labeled_fraction is not a hyper-parameter"):
        run_tune(grid, tmp_path / "tune", folds=2, echo=lambda s: None)
    assert fold_fake.calls == []


def test_a_grid_accepts_a_data_set_name(tiny_scenes, tmp_path, fold_fake, monkeypatch):
    import rsdml.data.datasets as datasets

    real = datasets.resolve_data
    monkeypatch.setattr(datasets, "resolve_data",
                        lambda v: str(tiny_scenes) if v == "ucmerced" else real(v))
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base": {"data": "ucmerced", "labeled_fraction": 0.5},
                                    "grid": {"lr": [0.003]}}))
    run_tune(grid, tmp_path / "tune", folds=2, echo=lambda s: None)
    assert {c.data for c in fold_fake.calls} == {str(tiny_scenes)}
