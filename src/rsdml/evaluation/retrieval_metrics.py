"""Retrieval metrics over a full cosine ranking of a gallery (the paper's RS application 3).

Each query ranks every gallery item by cosine similarity; equal similarities are ordered by the
lower gallery index (a total order, so results are reproducible). A query that is itself in the
gallery is removed from its own ranking. An item is relevant when it has the query's label; a
query with no relevant gallery item is left out of every mean (and counted in
``num_queries_without_relevant``). Exact definitions: docs/metrics.md.

Vectorised, no Python loop over queries: per block of queries one float32 matrix product
(the exact inner products of faiss' flat index), one float sort per row and one binary search
per relevant item give the rank of every relevant item; the metrics are then np.bincount sums
over those ranks.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rsdml.errors import RsdmlError
from rsdml.retrieval.index import order_key, similarity_blocks
from rsdml.vectors import l2_normalize

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

    # gallery positions of each class, ascending; relevant count per query
    by_label = np.argsort(g_lab, kind="stable")
    label_values, label_starts, label_counts = np.unique(
        g_lab[by_label], return_index=True, return_counts=True
    )
    label_ends = label_starts + label_counts
    n_rel = np.zeros(n_q, np.int64)
    if n_g:
        k = np.minimum(np.searchsorted(label_values, q_lab), len(label_values) - 1)
        n_rel = np.where(label_values[k] == q_lab, label_counts[k], 0)
        own_ok = self_idx >= 0
        n_rel -= own_ok & (g_lab[np.maximum(self_idx, 0)] == q_lab)

    # The next block's matrix product (BLAS) overlaps the previous block's ranking (numpy
    # sorts and searches, which release the GIL) in one worker thread.
    q_out, r_out = [], []
    block = _BLOCK_ELEMENTS if block_elements is None else block_elements
    pending = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        for start, sims in similarity_blocks(q, g, max_elements=block):
            rows = slice(start, start + len(sims))
            r_row, r_col = _relevant_pairs(q_lab[rows], self_idx[rows], by_label, label_values,
                                           label_starts, label_ends)
            if pending is not None:
                _collect(pending, q_out, r_out)
            pending = (start, pool.submit(_block_ranks, sims, self_idx[rows], r_row, r_col,
                                          q_lab[rows], g_lab, q[rows], g))
            del sims
        if pending is not None:
            _collect(pending, q_out, r_out)
    if not q_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), n_rel
    return np.concatenate(q_out), np.concatenate(r_out), n_rel


def _collect(pending, q_out: list, r_out: list) -> None:
    start, future = pending
    r_row, r_rank = future.result()
    q_out.append(r_row + start)
    r_out.append(r_rank)


def _relevant_pairs(labels, own, by_label, label_values, label_starts, label_ends):
    """(row, gallery column) of every relevant pair in a block: one step per class."""
    rows_out, cols_out = [], []
    for c in np.unique(labels):
        k = np.searchsorted(label_values, c)
        if k == len(label_values) or label_values[k] != c:
            continue  # no gallery item of this class
        rows = np.flatnonzero(labels == c)
        cols = by_label[label_starts[k] : label_ends[k]]
        rows_out.append(np.repeat(rows, len(cols)))
        cols_out.append(np.tile(cols, len(rows)))
    if not rows_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    r_row, r_col = np.concatenate(rows_out), np.concatenate(cols_out)
    keep = r_col != own[r_row]  # the query itself is not relevant to itself
    return r_row[keep], r_col[keep]


def _block_ranks(sims, own, r_row, r_col, q_lab, g_lab, q_rows, g):
    """(row, 0-based rank) of the given relevant pairs, sorted by row then rank.

    Rank = #items more similar + #equally similar ones with a lower gallery index. Works on
    u = -similarity: each row is sorted once (float sort) and laid end to end with row offsets
    of 4 (|u| <= 2) into one ascending float64 array, so one binary search per relevant item
    counts the items above it. A relevant item tied with any other item sends its row to the
    exact (similarity, index) key sort, on similarities recomputed from ``q_rows`` and ``g``
    (``sims`` is sorted in place).
    """
    n_rows, n = sims.shape
    u = np.negative(sims, out=sims)
    has_own = np.flatnonzero(own >= 0)
    u[has_own, own[has_own]] = 2.0  # the query itself ranks last, below every cosine
    offsets = 4.0 * np.arange(n_rows)
    needles = u[r_row, r_col] + offsets[r_row]
    order = np.argsort(needles)  # by row, then rank (no ties) - also speeds up the search
    r_row, needles = r_row[order], needles[order]
    u.sort(axis=1)
    hay = np.add(u, offsets[:, None]).ravel()
    del u, sims
    first = np.searchsorted(hay, needles, side="left")
    rank = first - r_row * n
    nxt = np.minimum(first + 1, hay.size - 1)
    tied = (rank + 1 < n) & (hay[nxt] == needles)
    del hay
    if not tied.any():
        return r_row, rank
    tie_rows = np.unique(r_row[tied])
    rel = g_lab[None, :] == q_lab[tie_rows, None]
    rel[own[tie_rows] >= 0, own[tie_rows][own[tie_rows] >= 0]] = False
    tie_sims = q_rows[tie_rows] @ g.T
    tie_sims[own[tie_rows] >= 0, own[tie_rows][own[tie_rows] >= 0]] = -2.0  # self last
    t_row, t_rank = _key_ranks(tie_sims, rel)
    keep = ~np.isin(r_row, tie_rows)
    r_row = np.concatenate([r_row[keep], tie_rows[t_row]])
    rank = np.concatenate([rank[keep], t_rank])
    order = np.argsort((r_row << 32) | rank)
    return r_row[order], rank[order]


def _key_ranks(sims: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ranks by one sort of (similarity desc, index asc, relevant) int64 keys per row."""
    n = sims.shape[1]
    low = rel.view(np.uint8).astype(np.uint32)
    low |= np.arange(n, dtype=np.uint32) << np.uint32(1)
    keys = order_key(sims, low)
    keys.sort(axis=1)
    return np.nonzero(keys & 1)


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

    def per_q(weights: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
        ids = qid if sel is None else qid[sel]
        w = weights if sel is None else weights[sel]
        return np.bincount(ids, weights=w, minlength=n_q).astype(np.float64)

    values: dict[str, np.ndarray] = {"map": per_q(prec) / R}
    head = np.flatnonzero(pos <= max(ks, default=0))  # the top-K metrics only look here
    h_pos, h_prec = pos[head], prec[head]
    for k in ks:
        top = np.flatnonzero(h_pos <= k)
        hits = np.bincount(qid[head[top]], minlength=n_q).astype(np.float64)
        sum_prec = np.bincount(qid[head[top]], weights=h_prec[top], minlength=n_q)
        values[f"map_at_{k}"] = np.divide(sum_prec, hits, out=np.zeros(n_q), where=hits > 0)
        values[f"p_at_{k}"] = hits / k
    in_r = np.flatnonzero(pos <= n_rel[qid])
    values["map_at_r"] = per_q(prec, in_r) / R
    values["r_precision"] = np.bincount(qid[in_r], minlength=n_q) / R
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
    out["gallery_size"] = len(gallery_labels)
    if per_query:
        out["per_query"] = {name: np.where(valid, v, np.nan) for name, v in values.items()}
    return out
