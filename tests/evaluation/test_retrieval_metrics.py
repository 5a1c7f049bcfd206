import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from torchmetrics.retrieval import RetrievalMAP, RetrievalPrecision

from rsdml.evaluation.clustering import clustering_metrics, kmeans_labels
from rsdml.evaluation.retrieval_metrics import retrieval_metrics
from rsdml.retrieval.index import l2_normalize

KS = (5, 10, 20, 50, 100)


# ----------------------------------------------------------------- independent reference
def brute_force(q, ql, g, gl, self_idx=None, ks=KS):
    """Plain loops: rank each query's gallery, then every metric by its textbook formula."""
    rankings = []
    for i in range(len(q)):
        items = [j for j in range(len(g)) if self_idx is None or j != self_idx[i]]
        sims = {j: float(np.dot(q[i], g[j])) for j in items}
        order = sorted(items, key=lambda j: (-sims[j], j))  # ties: lower gallery index first
        rankings.append([int(gl[j] == ql[i]) for j in order])
    gtm = max(sum(r) for r in rankings)
    per = {}
    for rel in rankings:
        ng = sum(rel)
        if ng == 0:
            continue  # no relevant item: left out of every mean
        d = {}

        d["map"] = _ap(rel, ng)
        for k in ks:
            d[f"map_at_{k}"] = _ap(rel[:k], None)
            d[f"p_at_{k}"] = sum(rel[:k]) / k
        d["map_at_r"] = _ap(rel[:ng], ng)
        d["r_precision"] = sum(rel[:ng]) / ng
        kq = min(4 * ng, 2 * gtm)
        ranks = [pos if pos <= kq else 1.25 * kq for pos, r in enumerate(rel, 1) if r]
        mrr = sum(ranks) / ng - 0.5 - ng / 2
        d["anmrr"] = mrr / (1.25 * kq - 0.5 - ng / 2)
        for key, v in d.items():
            per.setdefault(key, []).append(v)
    return {k: float(np.mean(v)) for k, v in per.items()}


def _ap(prefix, denom):
    """Sum of precision at each relevant rank of ``prefix``, over ``denom`` (None: the hits)."""
    hits, total = 0, 0.0
    for pos, r in enumerate(prefix, 1):
        if r:
            hits += 1
            total += hits / pos
    denom = hits if denom is None else denom
    return total / denom if denom else 0.0


def _tied_data(seed, n=120, dim=4, classes=5):
    """Unit vectors where a third are basis vectors: many exactly equal similarities."""
    rng = np.random.default_rng(seed)
    x = l2_normalize(rng.standard_normal((n, dim)))
    onehot = rng.integers(0, dim, n // 3)
    x[: n // 3] = 0
    x[np.arange(n // 3), onehot] = 1
    p = np.linspace(2, 0.3, classes)
    labels = rng.choice(classes, n, p=p / p.sum())  # classes of different sizes
    return x, labels


def _assert_close(ours, ref):
    for key, v in ref.items():
        assert ours[key] == pytest.approx(v, abs=1e-12), key


# ----------------------------------------------------------------- brute force, ties
@pytest.mark.parametrize("seed", range(4))
def test_archive_gallery_equals_brute_force_with_ties(seed):
    x, y = _tied_data(seed)
    q = np.random.default_rng(seed).choice(len(x), 50, replace=False)
    ours = retrieval_metrics(x[q], y[q], x, y, query_gallery_index=q)
    _assert_close(ours, brute_force(x[q], y[q], x, y, self_idx=q))
    assert ours["gallery_size"] == len(x)


@pytest.mark.parametrize("seed", range(4))
def test_separate_gallery_equals_brute_force_with_ties(seed):
    x, y = _tied_data(seed + 10)
    g = np.random.default_rng(seed).choice(len(x), 40, replace=False)
    q = np.setdiff1d(np.arange(len(x)), g)
    y = y.copy()
    y[q[:3]] = 99  # queries whose class is absent from the gallery are left out
    ours = retrieval_metrics(x[q], y[q], x[g], y[g])
    _assert_close(ours, brute_force(x[q], y[q], x[g], y[g]))
    absent = int((~np.isin(y[q], y[g])).sum())
    assert absent >= 3
    assert ours["num_queries_without_relevant"] == absent
    assert ours["num_queries"] == len(q) - absent


def test_small_blocks_give_the_same_numbers(monkeypatch):
    import rsdml.evaluation.retrieval_metrics as rm

    x, y = _tied_data(7)
    full = retrieval_metrics(x, y, x, y, query_gallery_index=np.arange(len(x)))
    monkeypatch.setattr(rm, "_BLOCK_ELEMENTS", 3 * len(x))  # 3 queries per block
    assert retrieval_metrics(x, y, x, y, query_gallery_index=np.arange(len(x))) == full


def test_hand_computed_example():
    angles = np.radians([0, 10, 20, 30, 40])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.array([0, 0, 1, 0, 1])  # query 0; ranking: rel, irr, rel, irr
    out = retrieval_metrics(x[:1], y[:1], x[1:], y[1:], ks=(1, 2, 3))
    assert out["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert out["map_at_2"] == pytest.approx(1.0)  # one relevant item in the top 2, at rank 1
    assert out["p_at_3"] == pytest.approx(2 / 3)
    assert out["map_at_r"] == pytest.approx(0.5) and out["r_precision"] == pytest.approx(0.5)
    # ANMRR: NG=2, K=min(8, 4)=4, ranks 1 and 3: AVR 2, MRR 0.5, NMRR 0.5 / (5 - 1.5)
    assert out["anmrr"] == pytest.approx(0.5 / 3.5)


def test_anmrr_penalises_ranks_beyond_k():
    # NG=1, GTM=1 -> K=2; the relevant item at rank 3 counts as 1.25*2 = 2.5: NMRR = 1
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.1, 1.0]])
    y = np.array([0, 1, 1, 0])
    out = retrieval_metrics(x[:1], y[:1], x[1:], y[1:])
    assert out["anmrr"] == pytest.approx(1.0)
    assert out["map"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------- torchmetrics
def _continuous(seed, n=150, dim=6, classes=4):
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, n, p=[0.4, 0.3, 0.2, 0.1])
    centres = rng.standard_normal((classes, dim))
    return l2_normalize(centres[y] + rng.standard_normal((n, dim))), y


@pytest.mark.parametrize("seed", range(3))
def test_map_at_k_and_p_at_k_equal_torchmetrics(seed):
    x, y = _continuous(seed)
    q = np.arange(0, len(x), 3)
    ours = retrieval_metrics(x[q], y[q], x, y, query_gallery_index=q)
    sims = x[q] @ x.T
    qi, gi = np.meshgrid(np.arange(len(q)), np.arange(len(x)), indexing="ij")
    keep = gi != q[:, None]  # the query itself is not in its own ranking
    # torchmetrics treats preds <= 0 as non-relevant; cos + 2 keeps the order and stays > 0
    preds = torch.from_numpy(sims[keep] + 2.0).double()
    target = torch.from_numpy(y[gi[keep]] == y[q][qi[keep]])
    indexes = torch.from_numpy(qi[keep])
    for k in KS:
        tm_map = RetrievalMAP(top_k=k, empty_target_action="skip")(preds, target, indexes)
        tm_p = RetrievalPrecision(top_k=k, empty_target_action="skip")(preds, target, indexes)
        assert ours[f"map_at_{k}"] == pytest.approx(tm_map.item(), abs=1e-6), k
        assert ours[f"p_at_{k}"] == pytest.approx(tm_p.item(), abs=1e-6), k
    tm_full = RetrievalMAP(empty_target_action="skip")(preds, target, indexes)
    assert ours["map"] == pytest.approx(tm_full.item(), abs=1e-6)


# ----------------------------------------------------------------- pytorch-metric-learning
def _pml(include, **kw):
    return AccuracyCalculator(include=include, k="max_bin_count", device=torch.device("cpu"), **kw)


@pytest.mark.parametrize("seed", range(3))
def test_p1_map_at_r_r_precision_equal_pml_when_queries_are_the_gallery(seed):
    x, y = _continuous(seed)
    ours = retrieval_metrics(x, y, x, y, query_gallery_index=np.arange(len(x)), ks=(1,))
    pml = _pml(("precision_at_1", "mean_average_precision_at_r", "r_precision")).get_accuracy(x, y)
    assert ours["p_at_1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_p1_map_at_r_r_precision_equal_pml_with_a_separate_gallery(seed):
    x, y = _continuous(seed + 5, n=200)
    q, g = x[:120], x[120:]
    ours = retrieval_metrics(q, y[:120], g, y[120:], ks=(1,))
    pml = _pml(("precision_at_1", "mean_average_precision_at_r", "r_precision")).get_accuracy(
        q, y[:120], g, y[120:], ref_includes_query=False
    )
    assert ours["p_at_1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)


def test_nmi_equals_pml_on_the_same_clustering():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 5, 300)
    x = np.eye(8)[truth] * 5 + rng.standard_normal((300, 8))
    y = truth.copy()
    flip = rng.random(300) < 0.15
    y[flip] = rng.integers(0, 5, flip.sum())  # noisy labels: NMI well below 1

    def kmeans_func(emb, n_clusters):
        return torch.from_numpy(kmeans_labels(emb.cpu().numpy(), n_clusters, seed=0))

    pml = _pml(("NMI",), kmeans_func=kmeans_func).get_accuracy(x.astype(np.float32), y)
    ours = clustering_metrics(x.astype(np.float32), y, seed=0)
    assert ours["nmi"] == pytest.approx(pml["NMI"], abs=1e-6)
    assert 0.3 < ours["nmi"] < 0.95


def test_degenerate_galleries():
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    empty = retrieval_metrics(x, np.arange(5), x[:0], np.zeros(0, int))
    assert np.isnan(empty["map"]) and empty["num_queries_without_relevant"] == 5
    alone = retrieval_metrics(x, np.arange(5), x, np.arange(5), query_gallery_index=np.arange(5))
    assert alone["num_queries"] == 0  # each query's only same-class image is itself
    same = retrieval_metrics(x, np.zeros(5, int), x, np.zeros(5, int),
                             query_gallery_index=np.arange(5))
    assert same["map"] == 1.0 and same["anmrr"] == 0.0
