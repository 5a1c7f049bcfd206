import json

import numpy as np
import pytest

from rsdml.errors import RsdmlError
from rsdml.evaluation.knn import knn_accuracy
from rsdml.evaluation.retrieval_metrics import retrieval_metrics
from rsdml.evaluation.suite import (
    evaluate_embeddings,
    headline_metrics,
    load_embeddings,
    save_embeddings,
    write_evaluation,
)


def _run(seed=0, n=240, classes=4, dim=12):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (rng.standard_normal((classes, dim))[y] + rng.standard_normal((n, dim))).astype(np.float32)
    roles = rng.choice(["labeled", "unlabeled", "val", "test"], n, p=[0.3, 0.2, 0.1, 0.4])
    return x, y, roles


def test_structure_and_consistency_with_the_parts():
    x, y, roles = _run()
    m = evaluate_embeddings(x, y, roles, seed=0)
    ref, test = roles == "labeled", roles == "test"
    for k in (1, 5, 10):
        part = m["knn"][f"k{k}"]
        assert part["accuracy"] == pytest.approx(knn_accuracy(x[ref], y[ref], x[test], y[test], k=k))
        assert len(part["per_class_accuracy"]) == 4
        assert 0 <= part["macro_f1"] <= 1
    cm = np.array(m["knn"]["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == test.sum()
    assert np.trace(cm) / cm.sum() == pytest.approx(m["knn"]["k10"]["accuracy"])
    assert set(m["clustering"]) >= {"accuracy", "nmi", "ari"}
    lab = retrieval_metrics(x[test], y[test], x[ref], y[ref])
    assert m["retrieval"]["labeled"] == pytest.approx(lab)
    idx = np.flatnonzero(test)
    arc = retrieval_metrics(x[test], y[test], x, y, query_gallery_index=idx)
    assert m["retrieval"]["archive"] == pytest.approx(arc)
    assert m["retrieval"]["archive"]["gallery_size"] == len(x)
    assert m["counts"]["test"] == test.sum()


def test_headline_metrics_flat_keys():
    x, y, roles = _run(1)
    m = evaluate_embeddings(x, y, roles)
    h = headline_metrics(m)
    assert h["knn_acc"] == m["knn"]["k10"]["accuracy"]
    assert h["knn_acc_k1"] == m["knn"]["k1"]["accuracy"]
    assert h["map_at_20"] == m["retrieval"]["labeled"]["map_at_20"]
    assert h["archive_anmrr"] == m["retrieval"]["archive"]["anmrr"]
    for key in ("macro_f1", "cluster_acc", "nmi", "ari", "map", "p_at_10", "map_at_r",
                "r_precision", "anmrr", "archive_map"):
        assert isinstance(h[key], float)
    assert headline_metrics({}) == {}


def test_roles_are_checked():
    x, y, roles = _run(2)
    with pytest.raises(RsdmlError, match="unknown role"):
        evaluate_embeddings(x, y, np.where(roles == "val", "validation", roles))
    with pytest.raises(RsdmlError, match="'test'"):
        evaluate_embeddings(x, y, np.where(roles == "test", "val", roles))
    with pytest.raises(RsdmlError):
        evaluate_embeddings(x, y[:-1], roles)


def test_embeddings_round_trip_and_metrics_json(tmp_path):
    x, y, roles = _run(3)
    y = y.copy()
    y[(roles == "test") & (y == 3)] = 2  # class 3 has no test image: per-class value is null
    paths = [f"c{c}/img_{i}.jpg" for i, c in enumerate(y)]
    m = write_evaluation(tmp_path / "eval", x, y, roles, paths, ["a", "b", "c", "d"])
    loaded = load_embeddings(tmp_path / "eval" / "embeddings.npz")
    np.testing.assert_array_equal(loaded.embeddings, x)
    assert loaded.embeddings.dtype == np.float32
    np.testing.assert_array_equal(loaded.labels, y)
    assert list(loaded.roles) == list(roles) and list(loaded.paths) == paths
    text = (tmp_path / "eval" / "metrics.json").read_text()
    on_disk = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert on_disk == m
    assert on_disk["class_names"] == ["a", "b", "c", "d"]
    assert on_disk["knn"]["k10"]["per_class_accuracy"][3] is None
    assert not list((tmp_path / "eval").glob(".*tmp"))  # no temporary files left


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(RsdmlError, match="rsdml evaluate"):
        load_embeddings(tmp_path / "missing.npz")
    np.savez(tmp_path / "partial.npz", embeddings=np.zeros((2, 3), np.float32))
    with pytest.raises(RsdmlError, match="lacks"):
        load_embeddings(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RsdmlError):
        load_embeddings(tmp_path / "junk.npz")
    x, y, roles = _run(4)
    with pytest.raises(RsdmlError, match="paths"):
        save_embeddings(tmp_path / "e.npz", x, y, roles, ["p"] * 3)
