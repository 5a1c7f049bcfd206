"""Relevance feedback: Rocchio's query update on unit embeddings.

The user marks some results relevant and some not; the query moves towards the mean of the
relevant vectors and away from the mean of the non-relevant ones, and is searched again. On
unit vectors with cosine similarity this is the classic vector-space update (Rocchio, 1971):

    q' = alpha * q + beta * mean(relevant) - gamma * mean(non_relevant),   then q' / |q'|

A missing group contributes nothing (its mean is not taken over zero vectors).
"""

from __future__ import annotations

import numpy as np

from rsdml.errors import RsdmlError

#: Defaults from the information-retrieval textbooks (Manning, Raghavan & Schuetze, ch. 9):
#: keep the original query, trust positive feedback more than negative.
ALPHA, BETA, GAMMA = 1.0, 0.75, 0.15


def rocchio(query: np.ndarray, relevant: np.ndarray, non_relevant: np.ndarray, *,
            alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> np.ndarray:
    """The updated unit query vector (float32) for one query and two sets of row vectors."""
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    out = alpha * q
    for rows, weight in ((relevant, beta), (non_relevant, -gamma)):
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, q.shape[0])
        if len(rows):
            out = out + weight * rows.mean(axis=0)
    norm = float(np.linalg.norm(out))
    if not np.isfinite(norm) or norm < 1e-12:
        raise RsdmlError("the feedback cancels the query out (a zero vector); mark fewer results "
                         "not relevant or lower gamma")
    return (out / norm).astype(np.float32)
