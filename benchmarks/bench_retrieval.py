"""Retrieval over a synthetic 1,000,000 x 128 archive: exact vs approximate faiss search.

Prints one JSON object: exact queries/second, and for an IVF-Flat index (spherical k-means
lists) its build time and, per ``nprobe``, queries/second and recall@10 against exact search.

Data model: unit vectors drawn around 1,000 random "scene" centres (centre + isotropic noise,
then L2-normalised); queries come from the same model and are not in the archive. Recall
depends on that model: with the default noise (0.12) the clusters are distinct and a few lists
suffice; ``--noise 0.15`` makes them overlap into a nearly uniform sphere, the hard case, where
recall@10 >= 0.95 needed nprobe 64. Memory: the archive (512 MB) plus the index's copy (512 MB).

    python benchmarks/bench_retrieval.py [--n 1000000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from rsdml.retrieval.index import ApproximateIndex, ExactIndex


def synthetic(n: int, dim: int, centres: np.ndarray, noise: float, rng) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)]
    x += noise * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--centres", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.12, help="per-dimension noise std")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.centres, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    t = time.perf_counter()
    archive = synthetic(args.n, args.dim, centres, args.noise, rng)
    queries = synthetic(args.queries, args.dim, centres, args.noise, rng)
    t_data = time.perf_counter() - t

    t = time.perf_counter()
    exact = ExactIndex(archive, normalized=True)
    t_exact_build = time.perf_counter() - t
    t = time.perf_counter()
    _, truth = exact.search(queries, 10, normalized=True)
    t_exact = time.perf_counter() - t
    del exact

    t = time.perf_counter()
    approx = ApproximateIndex(archive, kind="ivf", seed=args.seed, normalized=True)
    t_build = time.perf_counter() - t
    sweep = []
    for nprobe in args.nprobe:
        approx.tune(nprobe=nprobe)
        t = time.perf_counter()
        _, found = approx.search(queries, 10, normalized=True)
        dt = time.perf_counter() - t
        hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum()
        sweep.append({"nprobe": nprobe, "qps": round(len(queries) / dt, 1),
                      "recall_at_10": round(float(hits) / truth.size, 4)})
    good = [s for s in sweep if s["recall_at_10"] >= 0.95]
    chosen = max(good, key=lambda s: s["qps"]) if good else max(sweep, key=lambda s: s["recall_at_10"])
    print(json.dumps({
        "benchmark": "retrieval",
        "archive": [args.n, args.dim],
        "queries": args.queries,
        "data": f"{args.centres} centres + N(0, {args.noise}^2) noise, L2-normalised",
        "seconds_data": round(t_data, 2),
        "exact": {"index": "IndexFlatIP", "seconds_build": round(t_exact_build, 2),
                  "seconds_search": round(t_exact, 2), "qps": round(args.queries / t_exact, 1)},
        "approximate": {"index": f"IndexIVFFlat(nlist={approx.index.nlist}, spherical)",
                        "seconds_build": round(t_build, 2), "sweep": sweep},
        "chosen": chosen,
        "target_recall_at_10": 0.95,
        "meets_target": bool(good),
        "speedup_vs_exact": round(chosen["qps"] / (args.queries / t_exact), 1),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
    }))


if __name__ == "__main__":
    main()
