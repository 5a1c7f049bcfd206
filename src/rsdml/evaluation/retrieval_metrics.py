"""Retrieval metrics over a full cosine ranking of a gallery (the paper's RS application 3).

Each query ranks every gallery item by cosine similarity; equal similarities are ordered by the
lower gallery index (a total order, so results are reproducible). A query that is itself in the
gallery is removed from its own ranking. An item is relevant when it has the query's label; a
query with no relevant gallery item is left out of every mean (and counted in
``num_queries_without_relevant``). Exact definitions: docs/metrics.md.

Vectorised: one sgemm + one integer sort per block of queries, then the metrics come from the
ranks of the relevant items alone (np.bincount per query), no Python loop over queries.
"""

from __future__ import annotations

import sys

import numpy as np

from rsdml.errors import RsdmlError
from rsdml.retrieval.index import l2_normalize, order_key, similarity_blocks

KS = (5, 10, 20, 50, 100)
_BLOCK_ELEMENTS = 1 << 24  # similarities per query block (~200 MB of temporaries)


def relevant_ranks(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    query_gallery_index: np.ndarray | None = None,
    block_elements: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each query's relevant items land in its ranking.

    Returns (query id, 0-based rank, relevant count R per query): for every relevant
    (query, gallery item) pair its query id and rank, sorted by query then rank.
    ``query_gallery_index[i]`` is query i's own position in the gallery, or -1.
    """
    q = l2_normalize(query_emb)
    g = l2_normalize(gallery_emb)
    q_lab = np.asarray(query_labels).astype(np.int64, copy=False).ravel()
    g_lab = np.asarray(gallery_labels).astype(np.int64, copy=False).ravel()
    n_q, n_g = len(q), len(g)
    if len(q_lab) != n_q or len(g_lab) != n_g:
        raise RsdmlError("retrieval: embeddings and labels must have the same length")
    if n_q and n_g and q.shape[1] != g.shape[1]:
        raise RsdmlError(f"retrieval: query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if n_g >= 1 << 31:
        raise RsdmlError("retrieval: galleries above 2^31 items are not supported")
    self_idx = (
        np.full(n_q, -1, np.int64)
        if query_gallery_index is None
        else np.asarray(query_gallery_index, dtype=np.int64).ravel()
    )
    if len(self_idx) != n_q or self_idx.max(initial=-1) >= n_g:
        raise RsdmlError("retrieval: query_gallery_index must give one gallery position per query")

    labels_sorted, counts = np.unique(g_lab, return_counts=True)
    pos = np.searchsorted(labels_sorted, q_lab)
    found = (pos < len(labels_sorted)) & (labels_sorted[np.minimum(pos, len(labels_sorted) - 1)] == q_lab)
    n_rel = np.where(found, counts[np.minimum(pos, len(counts) - 1)], 0)
    in_gallery = self_idx >= 0
    n_rel = n_rel - (in_gallery & (g_lab[np.maximum(self_idx, 0)] == q_lab))

    # Key low bits: (gallery index << 1) | relevant, so one sort orders by (similarity desc,
    # index asc) and the relevance of every rank is read off the key without a gather.
    ids2 = np.arange(n_g, dtype=np.uint32) << np.uint32(1)
    q_out, r_out = [], []
    block = _BLOCK_ELEMENTS if block_elements is None else block_elements
    for start, sims in similarity_blocks(q, g, max_elements=block):
        rows = np.arange(start, start + len(sims))
        own = self_idx[rows]
        mask = own >= 0
        sims[np.flatnonzero(mask), own[mask]] = -np.inf  # self goes last and is not relevant
        low = np.equal(g_lab[None, :], q_lab[rows, None]).view(np.uint8).astype(np.uint32)
        low[np.flatnonzero(mask), own[mask]] = 0
        low |= ids2
        keys = order_key(sims, low)
        del sims, low
        keys.sort(axis=1)
        r_row, r_rank = np.nonzero(_low_bit(keys))
        q_out.append(r_row + start)
        r_out.append(r_rank)
    if not q_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), n_rel
    return np.concatenate(q_out), np.concatenate(r_out), n_rel


def _low_bit(keys: np.ndarray) -> np.ndarray:
    """keys & 1 as a bool array, reading one byte per key where the layout allows."""
    if sys.byteorder == "little" and keys.flags.c_contiguous:
        return (keys.view(np.uint8)[..., ::8] & 1).view(bool)
    return (keys & 1).astype(bool)


def retrieval_metrics(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    query_gallery_index: np.ndarray | None = None,
    ks: tuple[int, ...] = KS,
    per_query: bool = False,
) -> dict:
    """mAP, mAP@K, P@K, MAP@R, R-precision and ANMRR for cosine retrieval.

    Keys: ``map``, ``map_at_{K}``, ``p_at_{K}``, ``map_at_r``, ``r_precision``, ``anmrr``,
    ``num_queries``, ``num_queries_without_relevant``, ``gallery_size``. With ``per_query``
    the per-query values (NaN for skipped queries) come under ``"per_query"``.
    """
    qid, rank, n_rel = relevant_ranks(
        query_emb,
        query_labels,
        gallery_emb,
        gallery_labels,
        query_gallery_index=query_gallery_index,
    )
    n_q = len(n_rel)
    valid = n_rel > 0
    # j-th relevant item of its query (1-based): ranks are sorted within each query.
    first = np.zeros(n_q + 1, np.int64)
    np.cumsum(n_rel, out=first[1:])
    j = np.arange(len(qid)) - first[qid] + 1
    pos = rank + 1  # 1-based rank
    prec = j / pos  # precision at the rank of each relevant item
    R = np.maximum(n_rel, 1).astype(np.float64)

    def per_q(weights: np.ndarray) -> np.ndarray:
        return np.bincount(qid, weights=weights, minlength=n_q).astype(np.float64)

    values: dict[str, np.ndarray] = {"map": per_q(prec) / R}
    for k in ks:
        top = pos <= k
        hits = per_q(top.astype(np.float64))
        values[f"map_at_{k}"] = np.divide(
            per_q(prec * top), hits, out=np.zeros(n_q), where=hits > 0
        )
        values[f"p_at_{k}"] = hits / k
    in_r = pos <= n_rel[qid]
    values["map_at_r"] = per_q(prec * in_r) / R
    values["r_precision"] = per_q(in_r.astype(np.float64)) / R
    # ANMRR (MPEG-7): K(q) = min(4 NG, 2 max NG); ranks beyond K(q) count as 1.25 K(q).
    ng = n_rel.astype(np.float64)
    k_q = np.minimum(4 * ng, 2 * ng.max(initial=0))
    kq_item = k_q[qid]
    score = np.where(pos <= kq_item, pos, 1.25 * kq_item)
    avr = per_q(score) / R
    mrr = avr - 0.5 - ng / 2
    denom = 1.25 * k_q - 0.5 - ng / 2
    values["anmrr"] = np.divide(mrr, denom, out=np.zeros(n_q), where=valid)

    out: dict = {
        name: (float(v[valid].mean()) if valid.any() else float("nan"))
        for name, v in values.items()
    }
    out["num_queries"] = int(valid.sum())
    out["num_queries_without_relevant"] = int((~valid).sum())
    out["gallery_size"] = int(len(gallery_labels))
    if per_query:
        out["per_query"] = {name: np.where(valid, v, np.nan) for name, v in values.items()}
    return out
