"""Choosing what to label: every strategy skips labelled images; TypiClust and k-centre cover
well-separated groups, where random choice leaves some out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rsdml.errors import RsdmlError
from rsdml.labelling.predict import predict
from rsdml.labelling.suggest import resolve_strategy, suggest
from rsdml.retrieval.index import l2_normalize


def _blobs(n_groups: int = 6, per: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, 16)) * 4
    y = np.repeat(np.arange(n_groups), per)
    return l2_normalize(centres[y] + rng.normal(size=(len(y), 16)) * 0.3), y


@pytest.mark.parametrize("strategy", ["typiclust", "kcentre", "random"])
def test_never_suggests_labelled_images(strategy):
    x, _ = _blobs()
    labelled = np.arange(0, 240, 3)
    picks = suggest(x, labelled, 30, strategy=strategy, seed=1)
    assert len(picks) == len(set(picks)) == 30
    assert not set(picks) & set(labelled.tolist())


@pytest.mark.parametrize("strategy", ["typiclust", "kcentre"])
def test_one_pick_per_group_covers_every_group(strategy):
    x, y = _blobs()
    picks = suggest(x, np.array([], np.int64), 6, strategy=strategy, seed=0)
    assert sorted(y[picks].tolist()) == list(range(6))


def test_typiclust_picks_typical_images_not_outliers():
    x, y = _blobs(n_groups=2, per=50)
    outlier = l2_normalize(np.full((1, 16), 5.0))
    x = np.concatenate([x, outlier])
    picks = suggest(x, np.array([], np.int64), 2, strategy="typiclust", seed=0)
    assert len(x) - 1 not in picks
    assert sorted(y[picks].tolist()) == [0, 1]


def test_uncertain_picks_the_image_between_two_classes():
    x, y = _blobs(n_groups=2, per=30)
    mid = l2_normalize(x[y == 0].mean(0, keepdims=True) + x[y == 1].mean(0, keepdims=True))
    x = np.concatenate([x, mid])
    paths = [f"{i}.png" for i in range(len(x))]
    labels = {paths[0]: "a", paths[30]: "b"}
    pred = predict(x, paths, labels)
    assert pred.paths[int(np.argmin(pred.margin))] == paths[-1]
    margin = np.ones(len(x))
    margin[[paths.index(p) for p in pred.paths]] = pred.margin
    picks = suggest(x, np.array([0, 30]), 1, strategy="uncertain", margin=margin)
    assert picks and picks[0] not in (0, 30)


def test_uncertain_without_predictions_is_a_user_error():
    with pytest.raises(RsdmlError, match="needs predictions"):
        resolve_strategy("uncertain", has_predictions=False)
    assert resolve_strategy("auto", has_predictions=False) == "typiclust"
    assert resolve_strategy("auto", has_predictions=True) == "uncertain"


def test_predictions_agree_with_well_separated_labels():
    x, y = _blobs(n_groups=3, per=20)
    paths = [f"{i}.png" for i in range(len(x))]
    labels = {paths[i]: "abc"[y[i]] for i in (0, 1, 20, 21, 40, 41)}
    pred = predict(x, paths, labels)
    truth = np.asarray(["abc"[y[paths.index(p)]] for p in pred.paths])
    assert (np.asarray(pred.classes)[pred.predicted] == truth).all()
    assert (pred.knn_agreement > 0.5).all()
    assert np.allclose(pred.proba.sum(1), 1)


def test_predict_calibrates_on_labelled_images_it_did_not_train_on():
    """Issue 25, defect 13: predict's probability was softmax(cos / 0.05): 263 of 270 rows
    >= 0.95 while 60 % were right. With labelled images held out from training, the
    temperature is fitted on them and the mean probability follows the accuracy."""
    from rsdml.evaluation.prototypes import expected_calibration_error

    rng = np.random.default_rng(0)
    centres = l2_normalize(rng.normal(size=(5, 16)))
    y = np.repeat(np.arange(5), 200)
    x = l2_normalize(centres[y] + rng.normal(size=(len(y), 16)) * 0.7)
    paths = [f"{i}.png" for i in range(len(y))]
    lab = {paths[i]: str(y[i]) for i in range(0, len(y), 10)}
    held = set(list(lab)[::2])
    fixed = predict(x, paths, lab, temperature=0.05)
    pred = predict(x, paths, lab, held_out=held)
    truth = np.asarray([int(p.split(".")[0]) for p in pred.paths])
    truth = y[truth]
    assert pred.calibration.held_out == len(held)
    ece = expected_calibration_error(pred.proba, np.asarray([pred.classes.index(str(t))
                                                             for t in truth]))
    ece_fixed = expected_calibration_error(fixed.proba, np.asarray(
        [fixed.classes.index(str(t)) for t in truth]))
    assert ece < 0.05 < ece_fixed
    assert (pred.predicted == fixed.predicted).all()  # the order of classes is kept
    assert predict(x, paths, lab).calibration.held_out == 0  # nothing held out: not fitted


def test_uncertain_spreads_the_picks_over_classes_not_only_clusters():
    """Class a is split into two groups (a1 with its two labels, a2 large and unlabelled),
    class b too (b1 with one label, b2 smaller, unlabelled). Plain TypiClust takes the largest
    cluster without a label, a2: a third label for a, b still at one. With the classes, b2
    goes first: its class has fewer labels."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 4  # a1, a2, b1, b2
    sizes = [30, 60, 30, 40]
    group = np.repeat(np.arange(4), sizes)
    x = l2_normalize(centres[group] + rng.normal(size=(len(group), 16)) * 0.3)
    classes = np.asarray([0, 0, 1, 1])[group]  # a: 0, b: 1 (labels, or predictions)
    labelled = np.asarray([0, 1, 90])  # two in a1, one in b1
    margin = np.ones(len(x))
    plain = suggest(x, labelled, 1, strategy="uncertain", margin=margin)
    spread = suggest(x, labelled, 1, strategy="uncertain", margin=margin, classes=classes)
    assert group[plain[0]] == 1
    assert group[spread[0]] == 3
    # two picks: one for each class's unlabelled group, b's first
    assert group[suggest(x, labelled, 2, strategy="uncertain", margin=margin,
                         classes=classes)].tolist() == [3, 1]


def _vectors(source: str):
    from rsdml.training.archive_vectors import ArchiveVectors

    x, y = _blobs(n_groups=3, per=20)
    paths = [f"{'abc'[g]}/{i}.png" for i, g in enumerate(y)]
    return ArchiveVectors(Path("."), paths, x, source), y


def test_choose_uses_a_runs_predictions_and_the_trunk_without_them():
    """`rsdml suggest` and the labelling page's own queue choose in one place: with a run's
    vectors and labels of 2+ classes, `auto` is `uncertain` and says what it predicts; with
    the trunk's, or labels of one class, TypiClust and no predictions."""
    from rsdml.labelling.suggest import choose

    run, y = _vectors("run:runs/r1")
    labels = {run.paths[0]: "a", run.paths[20]: "b"}
    picks, used, predicted = choose(run, labels, 5)
    assert used == "uncertain" and len(picks) == 5
    assert set(predicted) == set(range(len(run.paths))) - {0, 20}
    assert {c for c, _ in predicted.values()} <= {"a", "b"}
    trunk, _ = _vectors("trunk:efficientnet_lite0@150")
    assert choose(trunk, labels, 5)[1:] == ("typiclust", {})
    assert choose(run, {run.paths[0]: "a"}, 5)[1] == "typiclust"


def test_the_label_page_queues_what_suggest_would(tmp_path, monkeypatch):
    """Defect: without --suggestions the page queued plain TypiClust even with --run and
    labels, where `rsdml suggest --run` chooses uncertain images spread over the classes."""
    import rsdml.training.archive_vectors as av
    from rsdml.labelling.page import open_session
    from rsdml.labelling.suggest import choose

    run, _ = _vectors("run:runs/r1")
    monkeypatch.setattr(av, "run_vectors", lambda *a, **k: run)
    (tmp_path / "labels.csv").write_text(f"path,class\n{run.paths[0]},a\n{run.paths[20]},b\n")
    session = open_session(tmp_path, tmp_path / "labels.csv", run="runs/r1", quiet=True,
                           log=lambda m: None)
    labels = {run.paths[0]: "a", run.paths[20]: "b"}
    picks, used, _ = choose(run, labels, len(run.paths) - 2)
    assert used == "uncertain"
    assert session.suggestions[:10] == [run.paths[i] for i in picks][:10]
