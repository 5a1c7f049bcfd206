import numpy as np
import pytest

from rsdml.errors import RsdmlError
from rsdml.evaluation.clustering import cluster_accuracy, clustering_metrics, kmeans_labels


def test_cluster_accuracy_hand_computed():
    labels = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([1, 1, 0, 2, 2, 2])  # best matching 1->0, 0->1, 2->2: 5 of 6
    assert cluster_accuracy(labels, clusters) == pytest.approx(5 / 6)


def test_cluster_accuracy_is_one_for_permuted_ids():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 200)
    perm = rng.permutation(7) + 100  # other id values too
    assert cluster_accuracy(labels, perm[labels]) == 1.0


def test_perfectly_separated_embeddings_score_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 300)
    x = np.eye(16)[labels] * 10 + 0.01 * rng.standard_normal((300, 16))
    m = clustering_metrics(x.astype(np.float32), labels, seed=0)
    assert m["accuracy"] == 1.0
    assert m["nmi"] == pytest.approx(1.0)
    assert m["ari"] == pytest.approx(1.0)
    assert m["num_clusters"] == 6


def test_random_embeddings_score_near_chance():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(6), 100)
    m = clustering_metrics(rng.standard_normal((600, 16)).astype(np.float32), labels, seed=0)
    assert m["accuracy"] < 0.3  # chance is 1/6; the best matching adds a little
    assert abs(m["ari"]) < 0.05
    assert m["nmi"] < 0.05


def test_kmeans_is_seeded():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    np.testing.assert_array_equal(kmeans_labels(x, 5, seed=4), kmeans_labels(x, 5, seed=4))


def test_too_few_points_is_a_user_error():
    with pytest.raises(RsdmlError):
        kmeans_labels(np.ones((3, 4), np.float32), 5)
