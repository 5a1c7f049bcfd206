"""Neighbour search over L2-normalised embeddings, through faiss.

Every search ranks by cosine similarity (inner product of unit vectors). Exact search breaks
ties in similarity by the lower gallery index, so results do not depend on faiss' internal heap
order (which puts the *higher* id first) and match scikit-learn's brute-force neighbours.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import faiss
import numpy as np

from rsdml.errors import RsdmlError
from rsdml.vectors import l2_normalize

__all__ = ["ExactIndex", "l2_normalize", "order_key", "similarity_blocks"]

# Extra candidates fetched beyond k so that a similarity tie at the k-th place can be resolved by
# index; rows whose tie runs past them are recomputed exactly.
_TIE_PAD = 8
# Similarities per block in similarity_blocks (128 MB of float32).
_BLOCK_ELEMENTS = 1 << 25


def order_key(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """int64 keys whose ascending order is (similarity descending, id ascending).

    The float32 bits are mapped to an order-preserving int32 (flip the magnitude bits of
    negatives), complemented (so larger similarities come first) and put above a 32-bit id
    (0 <= id < 2^32), so one integer sort gives a total, exact order. NaN is not allowed.
    """
    scores = np.asarray(scores, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0, and a copy
    bits = scores.view(np.int32)
    hi = bits >> 31
    hi &= 0x7FFFFFFF
    hi ^= bits
    np.invert(hi, out=hi)
    ids = np.asarray(ids)
    keys = np.empty(hi.shape, np.int64)
    if sys.byteorder == "little" and hi.ndim >= 1:
        words = keys.view(np.uint32).reshape(*hi.shape[:-1], hi.shape[-1], 2)
        words[..., 1] = hi.view(np.uint32)
        words[..., 0] = ids.astype(np.uint32, copy=False)
    else:
        np.left_shift(hi.astype(np.int64), 32, out=keys)
        keys |= ids.astype(np.int64, copy=False) & 0xFFFFFFFF
    return keys


def decode_scores(keys: np.ndarray) -> np.ndarray:
    """The float32 similarities stored in :func:`order_key` keys."""
    ordered = np.invert((np.asarray(keys) >> 32).astype(np.int32))
    bits = (ordered >> 31) & 0x7FFFFFFF
    bits ^= ordered
    return bits.view(np.float32)


class ExactIndex:
    """Exact cosine search (faiss IndexFlatIP) with ties broken by the lower gallery index."""

    def __init__(self, gallery: np.ndarray, *, normalized: bool = False) -> None:
        self.gallery = gallery if normalized else l2_normalize(gallery)
        self.gallery = np.ascontiguousarray(self.gallery, dtype=np.float32)
        self.index = faiss.IndexFlatIP(self.gallery.shape[1])
        self.index.add(self.gallery)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, queries: np.ndarray, k: int, *, normalized: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities float32 [n, k], gallery ids int64 [n, k]); k capped at the size."""
        q = queries if normalized else l2_normalize(queries)
        q = np.ascontiguousarray(q, dtype=np.float32)
        n_gallery = self.ntotal
        k = int(min(k, n_gallery))
        if k <= 0 or len(q) == 0:
            return np.zeros((len(q), max(k, 0)), np.float32), np.zeros((len(q), max(k, 0)), np.int64)
        k_fetch = min(k + _TIE_PAD, n_gallery)
        scores, ids = self.index.search(q, k_fetch)
        keys = order_key(scores, ids)
        keys.sort(axis=1)
        # faiss returns similarities sorted, so a tie at place k that reaches the last fetched
        # candidate may continue beyond it: recompute those rows over the whole gallery.
        if k_fetch < n_gallery:
            unsure = np.flatnonzero(scores[:, -1] >= scores[:, k - 1])
            if len(unsure):
                keys[unsure] = self._full_keys(q[unsure], k_fetch)
        top = keys[:, :k]
        return decode_scores(top), top & 0xFFFFFFFF

    def _full_keys(self, q: np.ndarray, width: int) -> np.ndarray:
        out = np.empty((len(q), width), np.int64)
        ids = np.arange(self.ntotal)
        for start, sims in similarity_blocks(q, self.gallery):
            keys = order_key(sims, np.broadcast_to(ids, sims.shape))
            keys.sort(axis=1)
            out[start : start + len(sims)] = keys[:, :width]
        return out


#: The approximate kinds :class:`ApproximateIndex` builds.
APPROXIMATE_KINDS = ("ivf", "hnsw", "ivfpq")


def pq_shape(d: int, n: int) -> tuple[int, int]:
    """(sub-quantizers, bits) for IVF-PQ: 2-4 dimensions per sub-quantizer (at most 64 of them,
    dividing ``d``), 8 bits, fewer when there are fewer than 256 training points (faiss needs at
    least one point per centroid)."""
    m = next((m for m in (64, 32, 16, 8, 4, 2) if d % m == 0 and d // m >= 2), 1)
    nbits = int(max(1, min(8, np.floor(np.log2(max(2, n))))))
    return m, nbits


class ApproximateIndex:
    """Approximate cosine search: IVF-Flat (default, fast to build), HNSW or IVF-PQ (compressed
    codes, for galleries that do not fit in memory as float32).

    ``nprobe`` (IVF) / ``ef_search`` (HNSW) trade speed for recall; see benchmarks/bench_retrieval.py.
    """

    def __init__(
        self,
        gallery: np.ndarray,
        *,
        kind: str = "ivf",
        nlist: int | None = None,
        nprobe: int = 32,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 128,
        train_size: int | None = None,
        seed: int = 0,
        normalized: bool = False,
    ) -> None:
        x = gallery if normalized else l2_normalize(gallery)
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = x.shape
        self.kind = kind
        if kind == "ivf":
            nlist = int(nlist or max(1, min(4096, round(np.sqrt(n)))))
            train_size = int(train_size or 64 * nlist)  # faiss asks for >= 39 points per list
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = seed
            self.index.cp.spherical = True  # unit centroids: inner product = cosine
            rng = np.random.default_rng(seed)
            sample = x if n <= train_size else x[np.sort(rng.choice(n, train_size, replace=False))]
            self.index.train(sample)
            self.index.add(x)
            self.index.nprobe = min(nprobe, nlist)
        elif kind == "ivfpq":
            nlist = int(nlist or max(1, min(4096, round(np.sqrt(n)))))
            m, nbits = pq_shape(d, n)
            train_size = int(train_size or max(64 * nlist, 256 * 39))
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits,
                                          faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = seed
            self.index.cp.spherical = True
            rng = np.random.default_rng(seed)
            sample = x if n <= train_size else x[np.sort(rng.choice(n, train_size, replace=False))]
            self.index.train(sample)
            self.index.add(x)
            self.index.nprobe = min(nprobe, nlist)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = ef_construction
            self.index.add(x)
            self.index.hnsw.efSearch = ef_search
        else:
            raise RsdmlError(f"approximate index kind {kind!r} is unknown; use one of "
                             f"{', '.join(APPROXIMATE_KINDS)}")

    @classmethod
    def wrap(cls, index: faiss.Index, kind: str) -> ApproximateIndex:
        """An ApproximateIndex around a built (e.g. read from disk) faiss index of ``kind``."""
        if kind not in APPROXIMATE_KINDS:
            raise RsdmlError(f"approximate index kind {kind!r} is unknown; use one of "
                             f"{', '.join(APPROXIMATE_KINDS)}")
        self = cls.__new__(cls)
        self.kind = kind
        self.index = index
        return self

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, *, normalized: bool = False) -> None:
        """Append vectors (ids continue from ``ntotal``); IVF keeps its trained centroids."""
        x = vectors if normalized else l2_normalize(vectors)
        self.index.add(np.ascontiguousarray(x, dtype=np.float32))

    def tune(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the search effort without rebuilding (IVF lists probed / HNSW beam width)."""
        if nprobe is not None and self.kind in ("ivf", "ivfpq"):
            self.index.nprobe = int(min(nprobe, self.index.nlist))
        if ef_search is not None and self.kind == "hnsw":
            self.index.hnsw.efSearch = int(ef_search)

    def search(
        self, queries: np.ndarray, k: int, *, normalized: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k (similarities, ids); missing results have id -1."""
        q = queries if normalized else l2_normalize(queries)
        k = int(min(k, self.ntotal))
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, k)
        return self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)


def similarity_blocks(
    queries: np.ndarray, gallery: np.ndarray, *, max_elements: int = _BLOCK_ELEMENTS
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first query row, cosine block [rows, n_gallery]) over unit-norm inputs.

    The exact inner products faiss' flat index computes (one sgemm per block), without
    its per-query heap, so a full ranking of every gallery item costs one sort per row.
    """
    rows = max(1, max_elements // max(1, gallery.shape[0]))
    for start in range(0, len(queries), rows):
        yield start, queries[start : start + rows] @ gallery.T
