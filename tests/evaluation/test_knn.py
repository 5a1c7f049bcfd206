import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from rsdml.errors import RsdmlError
from rsdml.evaluation.knn import knn_accuracy, knn_predict, knn_predict_many
from rsdml.retrieval.index import l2_normalize


def _data(seed, n_ref=300, n_query=200, dim=8, classes=5, dup=50):
    rng = np.random.default_rng(seed)
    ref = l2_normalize(rng.standard_normal((n_ref, dim)))
    labels = rng.integers(0, classes, n_ref)
    query = l2_normalize(rng.standard_normal((n_query, dim)))
    query[:dup] = ref[rng.integers(0, n_ref, dup)]  # zero-distance queries
    return ref, labels, query


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 10, 1000])
def test_predictions_equal_sklearn_distance_weighted(seed, k):
    ref, labels, query = _data(seed)
    pred, scores = knn_predict(ref, labels, query, k=k)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(ref)), weights="distance").fit(ref, labels)
    np.testing.assert_array_equal(pred, clf.predict(query))
    np.testing.assert_allclose(scores, clf.predict_proba(query), atol=1e-6)


def test_zero_distance_neighbour_takes_the_vote():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.1, 1.0]], np.float32)
    labels = np.array([0, 1, 1, 1])
    pred, scores = knn_predict(ref, labels, np.array([[1.0, 0.0]]), k=4)
    assert pred[0] == 0
    np.testing.assert_allclose(scores[0], [1.0, 0.0])


def test_hand_computed_weights():
    # query at angle 0; refs at 60 deg (class 0) and 90 deg, 90 deg (class 1)
    # euclidean distances: 1 and sqrt(2), sqrt(2): weights 1 vs 2/sqrt(2)=1.414 -> class 1
    ref = np.array([[0.5, np.sqrt(3) / 2], [0.0, 1.0], [0.0, -1.0]], np.float32)
    pred, scores = knn_predict(ref, np.array([0, 1, 1]), np.array([[1.0, 0.0]]), k=3)
    assert pred[0] == 1
    w = np.array([1.0, 2 / np.sqrt(2)])
    np.testing.assert_allclose(scores[0], w / w.sum(), rtol=1e-6)


def test_accuracy_and_k_capped():
    ref, labels, _ = _data(3, dup=0)
    assert knn_accuracy(ref, labels, ref, labels, k=1) == 1.0
    acc_big = knn_accuracy(ref, labels, ref[:20], labels[:20], k=10_000)
    assert 0.0 <= acc_big <= 1.0


def test_bad_inputs_raise_user_error():
    ref, labels, query = _data(4)
    with pytest.raises(RsdmlError):
        knn_predict(ref, labels[:-1], query)
    with pytest.raises(RsdmlError):
        knn_predict(ref, labels, query[:, :3])
    with pytest.raises(RsdmlError):
        knn_predict(ref, labels, query, k=0)


@pytest.mark.parametrize("seed", range(5))
def test_exact_ties_resolved_like_sklearn(seed):
    # basis vectors: many references at exactly the same distance (incl. zero), so which
    # neighbours fill the last places decides the vote; both take the lower index
    rng = np.random.default_rng(seed)
    ref = np.zeros((60, 4), np.float32)
    ref[np.arange(60), rng.integers(0, 4, 60)] = 1
    labels = rng.integers(0, 3, 60)
    query = np.zeros((20, 4), np.float32)
    query[np.arange(20), rng.integers(0, 4, 20)] = 1
    for k in (1, 3, 7, 20):
        pred, _ = knn_predict(ref, labels, query, k=k)
        clf = KNeighborsClassifier(n_neighbors=k, weights="distance").fit(ref, labels)
        np.testing.assert_array_equal(pred, clf.predict(query))


def test_predict_many_equals_single_k():
    ref, labels, query = _data(5)
    many = knn_predict_many(ref, labels, query, (1, 5, 10))
    for k, (pred, scores) in many.items():
        single_pred, single_scores = knn_predict(ref, labels, query, k=k)
        np.testing.assert_array_equal(pred, single_pred)
        np.testing.assert_allclose(scores, single_scores)
