"""Time every evaluation metric for 10,000 x 128 embeddings of 30 classes (target < 5 s).

Prints one JSON object: the wall-clock and CPU seconds of ``suite.evaluate_embeddings`` (kNN
K=1/5/10, k-means clustering, retrieval over the labelled and the archive gallery; no t-SNE, no
report) and, timed separately afterwards, each part (parts run outside the suite's one-thread
limit, so they may differ). The machine's 1-minute load average is printed too: the machine is
shared, and wall-clock times grow with it.

Roles follow the paper's transductive protocol: 20 % labelled, 80 % test, so there are 8,000
queries, a 2,000-image labelled gallery and a 10,000-image archive gallery. Data: unit vectors
around 30 random class centres (centre + isotropic noise).

    python benchmarks/bench_metrics.py [--n 10000] [--dim 128] [--classes 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from rsdml.evaluation.clustering import clustering_metrics
from rsdml.evaluation.knn import knn_predict_many
from rsdml.evaluation.retrieval_metrics import retrieval_metrics
from rsdml.evaluation.suite import evaluate_embeddings, headline_metrics
from rsdml.retrieval.index import l2_normalize


def _cpu() -> float:
    """CPU seconds of this process (all threads): less sensitive to a busy machine than wall."""
    t = os.times()
    return t.user + t.system


def timed(fn):
    t = time.perf_counter()
    fn()
    return round(time.perf_counter() - t, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--classes", type=int, default=30)
    ap.add_argument("--labeled-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    y = rng.integers(0, args.classes, args.n)
    centres = rng.standard_normal((args.classes, args.dim)).astype(np.float32)
    x = l2_normalize(0.35 * centres[y] + rng.standard_normal((args.n, args.dim), dtype=np.float32))
    roles = np.where(rng.random(args.n) < args.labeled_fraction, "labeled", "test")

    # warm-up on a small slice (lazy imports, thread pools), not counted
    evaluate_embeddings(x[:600], y[:600], roles[:600])

    t, cpu = time.perf_counter(), _cpu()
    metrics = evaluate_embeddings(x, y, roles, seed=args.seed)
    total, total_cpu = time.perf_counter() - t, _cpu() - cpu

    ref, test = np.flatnonzero(roles == "labeled"), np.flatnonzero(roles == "test")
    parts = {
        "knn_k1_k5_k10": timed(lambda: knn_predict_many(x[ref], y[ref], x[test], (1, 5, 10))),
        "clustering": timed(lambda: clustering_metrics(x[test], y[test], seed=args.seed)),
        "retrieval_labeled": timed(lambda: retrieval_metrics(x[test], y[test], x[ref], y[ref])),
        "retrieval_archive": timed(
            lambda: retrieval_metrics(x[test], y[test], x, y, query_gallery_index=test)
        ),
    }
    print(json.dumps({
        "benchmark": "metrics",
        "embeddings": [args.n, args.dim],
        "classes": args.classes,
        "queries": len(test),
        "labeled_gallery": len(ref),
        "archive_gallery": args.n,
        "seconds_total": round(total, 3),
        "cpu_seconds_total": round(total_cpu, 3),
        "target_seconds": 5.0,
        "meets_target": total < 5.0,
        "seconds_parts": parts,
        "headline": {k: round(v, 4) for k, v in headline_metrics(metrics).items()},
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "numpy": np.__version__},
    }))


if __name__ == "__main__":
    main()
