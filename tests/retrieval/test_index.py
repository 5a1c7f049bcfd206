import numpy as np
import pytest

from rsdml.errors import RsdmlError
from rsdml.retrieval.index import (
    ApproximateIndex,
    ExactIndex,
    decode_scores,
    l2_normalize,
    order_key,
)


def _brute_topk(q, g, k):
    sims = q @ g.T
    ids = np.broadcast_to(np.arange(len(g)), sims.shape)
    order = np.lexsort((ids, -sims), axis=1)[:, :k]  # similarity desc, then lower index
    return order


def test_order_key_orders_by_score_then_id_and_decodes():
    scores = np.array([[0.5, -0.0, 0.0, -1.0, 0.5, np.inf, -np.inf, 1e-30, -1e-30]], np.float32)
    ids = np.arange(scores.shape[1])[None]
    keys = order_key(scores, ids)
    np.testing.assert_array_equal(np.argsort(keys, axis=1)[0], [5, 0, 4, 7, 1, 2, 8, 3, 6])
    np.testing.assert_array_equal(decode_scores(keys), scores + np.float32(0))


def test_exact_search_breaks_ties_by_lower_index():
    rng = np.random.default_rng(0)
    g = np.zeros((60, 4), np.float32)
    g[np.arange(60), rng.integers(0, 4, 60)] = 1  # 4 distinct vectors, many exact ties
    q = np.eye(4, dtype=np.float32)
    sims, ids = ExactIndex(g).search(q, 25)  # ties run far past k + padding
    np.testing.assert_array_equal(ids, _brute_topk(q, g, 25))
    assert sims.dtype == np.float32 and np.all(np.diff(sims, axis=1) <= 0)


def test_exact_search_matches_brute_force_on_random_data():
    rng = np.random.default_rng(1)
    g = l2_normalize(rng.standard_normal((500, 16)))
    g[250:300] = g[:50]  # duplicated vectors
    q = l2_normalize(rng.standard_normal((40, 16)))
    sims, ids = ExactIndex(g).search(q, 10)
    np.testing.assert_array_equal(ids, _brute_topk(q, g, 10))
    np.testing.assert_allclose(sims, np.take_along_axis(q @ g.T, ids, axis=1), atol=1e-6)


def test_k_is_capped_at_the_gallery_size():
    g = l2_normalize(np.random.default_rng(2).standard_normal((7, 3)))
    _, ids = ExactIndex(g).search(g, 50)
    assert ids.shape == (7, 7)
    np.testing.assert_array_equal(ids[:, 0], np.arange(7))


def _clustered(n, d, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d))
    return l2_normalize(centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, d)))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall(kind):
    g = _clustered(4000, 32, 3)
    q = _clustered(200, 32, 4)
    _, exact = ExactIndex(g).search(q, 10)
    _, approx = ApproximateIndex(g, kind=kind, nprobe=16, ef_search=64).search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9


def test_bad_inputs():
    with pytest.raises(RsdmlError):
        l2_normalize(np.array([[np.nan, 1.0]]))
    with pytest.raises(RsdmlError):
        l2_normalize(np.ones(3))
    with pytest.raises(RsdmlError):
        ApproximateIndex(np.ones((10, 2)), kind="lsh")
