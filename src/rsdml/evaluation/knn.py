"""Distance-weighted kNN classification in the embedding space (the paper's RS application 1).

Neighbours come from exact cosine search (faiss, ties to the lower reference index); each
neighbour votes with 1 / euclidean distance between the unit vectors (euclid^2 = 2 - 2 cos).
A query at distance zero from some references takes only their votes, as scikit-learn's
``KNeighborsClassifier(weights="distance")`` does, so predictions equal it.
"""

from __future__ import annotations

import numpy as np

from rsdml.errors import RsdmlError
from rsdml.retrieval.index import ExactIndex
from rsdml.vectors import l2_normalize

_CHUNK = 2048  # queries per distance block (bounds the n x k x D float64 temporary)


def knn_predict(
    ref_emb: np.ndarray,
    ref_labels: np.ndarray,
    query_emb: np.ndarray,
    k: int = 10,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class per query and class scores [n_query, num_classes] (rows sum to 1).

    Labels are integers 0..C-1; ``k`` is capped at the reference size. Ties between classes go
    to the lowest class id.
    """
    return knn_predict_many(ref_emb, ref_labels, query_emb, (k,), num_classes)[k]


def knn_predict_many(
    ref_emb: np.ndarray,
    ref_labels: np.ndarray,
    query_emb: np.ndarray,
    ks: tuple[int, ...] = (1, 5, 10),
    num_classes: int | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """:func:`knn_predict` for several k from one neighbour search: {k: (predictions, scores)}."""
    ref_labels = np.asarray(ref_labels).astype(np.int64, copy=False).ravel()
    ref = l2_normalize(ref_emb)
    query = l2_normalize(query_emb)
    if len(ref) == 0:
        raise RsdmlError("kNN needs at least one labelled reference embedding; none were given")
    if len(ref_labels) != len(ref):
        raise RsdmlError(
            f"kNN: {len(ref)} reference embeddings but {len(ref_labels)} labels; pass one each"
        )
    if ref.shape[1] != query.shape[1]:
        raise RsdmlError(
            f"kNN: reference dimension {ref.shape[1]} != query dimension {query.shape[1]}"
        )
    for k in ks:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise RsdmlError(f"kNN: k={k} must be a positive whole number, e.g. 10")
    if ref_labels.min() < 0:
        raise RsdmlError("kNN: labels must be class ids 0..C-1, found a negative one")
    c = int(ref_labels.max()) + 1 if num_classes is None else int(num_classes)
    if ref_labels.max() >= c:
        raise RsdmlError(f"kNN: label {ref_labels.max()} is >= num_classes={c}")

    _, nbr = ExactIndex(ref, normalized=True).search(query, int(max(ks)), normalized=True)
    # Distances recomputed in float64 from the vectors: exact zeros for duplicates, where
    # 2 - 2cos from a float32 inner product would leave rounding noise.
    dist = np.empty(nbr.shape)
    for start in range(0, len(query), _CHUNK):
        block = slice(start, start + _CHUNK)
        diff = query[block, None, :].astype(np.float64) - ref[nbr[block]]
        dist[block] = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff))
    nbr_labels = ref_labels[nbr]
    return {k: _vote(dist[:, :k], nbr_labels[:, :k], c) for k in ks}


def _vote(dist: np.ndarray, nbr_labels: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore"):
        weights = 1.0 / dist
    zero = np.isinf(weights)
    has_zero = zero.any(axis=1)
    weights[has_zero] = zero[has_zero]
    # One contiguous row sum per class, like sklearn's weighted_mode, so exact ties agree.
    scores = np.stack([(weights * (nbr_labels == cls)).sum(axis=1) for cls in range(c)], axis=1)
    scores = scores.reshape(len(dist), c)
    predictions = scores.argmax(axis=1) if c and dist.shape[1] else np.zeros(len(dist), np.int64)
    total = scores.sum(axis=1, keepdims=True)
    np.divide(scores, total, out=scores, where=total > 0)
    return predictions.astype(np.int64), scores


def knn_accuracy(
    ref_emb: np.ndarray,
    ref_labels: np.ndarray,
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    k: int = 10,
) -> float:
    """Fraction of queries whose distance-weighted kNN prediction equals their label."""
    query_labels = np.asarray(query_labels).astype(np.int64, copy=False).ravel()
    if len(query_labels) == 0:
        return float("nan")
    c = int(max(np.max(ref_labels), query_labels.max())) + 1
    pred, _ = knn_predict(ref_emb, ref_labels, query_emb, k=k, num_classes=c)
    return float(np.mean(pred == query_labels))
