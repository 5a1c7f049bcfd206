"""Clustering of the test embeddings (the paper's RS application 2).

k-means with K = number of classes, seeded and restarted, scored against the true labels by
accuracy under the best one-to-one cluster->class matching (Hungarian), NMI and ARI.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from rsdml.errors import RsdmlError
from rsdml.vectors import l2_normalize

N_INIT = 5  # k-means++ restarts; the lowest-inertia run is kept


def kmeans_labels(embeddings: np.ndarray, n_clusters: int, *, seed: int = 0, n_init: int = N_INIT) -> np.ndarray:
    """Cluster ids of L2-normalised embeddings (sklearn k-means++, ``n_init`` restarts)."""
    x = l2_normalize(embeddings)
    if not 1 <= n_clusters <= len(x):
        raise RsdmlError(
            f"clustering: {n_clusters} clusters need at least as many embeddings, got {len(x)}"
        )
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed, algorithm="lloyd")
    # float64: sklearn's float32 path re-casts distance blocks on every k-means++ step.
    # One thread (OpenMP and BLAS), for this call only: on these small products the spinning
    # worker threads cost more than they save (measured 3x slower on 2 busy cores).
    with threadpool_limits(limits=1):
        return km.fit_predict(x.astype(np.float64)).astype(np.int64)


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy under the best one-to-one mapping of cluster ids to labels.

    Clusters left without a class (or classes without a cluster) count as wrong.
    """
    labels = np.asarray(labels).ravel()
    clusters = np.asarray(clusters).ravel()
    if len(labels) != len(clusters):
        raise RsdmlError("clustering: labels and cluster ids must have the same length")
    if len(labels) == 0:
        return float("nan")
    _, lab = np.unique(labels, return_inverse=True)
    _, clu = np.unique(clusters, return_inverse=True)
    table = np.zeros((clu.max() + 1, lab.max() + 1), np.int64)
    np.add.at(table, (clu, lab), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(labels))


def clustering_metrics(
    embeddings: np.ndarray, labels: np.ndarray, *, seed: int = 0, n_init: int = N_INIT
) -> dict[str, float]:
    """{"accuracy", "nmi", "ari", "num_clusters"} for k-means with K = number of classes."""
    labels = np.asarray(labels).ravel()
    k = len(np.unique(labels))
    if k == 0:
        return {"accuracy": float("nan"), "nmi": float("nan"), "ari": float("nan"), "num_clusters": 0}
    clusters = kmeans_labels(embeddings, k, seed=seed, n_init=n_init)
    return {
        "accuracy": cluster_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "num_clusters": int(k),
    }
