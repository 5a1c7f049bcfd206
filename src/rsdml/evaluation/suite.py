"""All evaluation numbers of a run, and the files that hold them (``RUN/eval/``).

Roles follow the split: kNN references and the ``labeled`` retrieval gallery are the
``labeled`` images, queries are the ``test`` images, the ``archive`` gallery is every image
but the query itself. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits

from rsdml.data.split import ROLES
from rsdml.errors import RsdmlError
from rsdml.evaluation.clustering import clustering_metrics
from rsdml.evaluation.knn import knn_predict_many
from rsdml.evaluation.retrieval_metrics import KS, retrieval_metrics
from rsdml.fsutil import atomic_write_npz, atomic_write_text
from rsdml.vectors import l2_normalize

KNN_KS = (1, 5, 10)
CONFUSION_K = 10


class EmbeddingSet(NamedTuple):
    embeddings: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # int64 [N]
    roles: np.ndarray  # str [N], one of ROLES
    paths: np.ndarray  # str [N], relative to the data root


def evaluate_embeddings(
    embeddings: np.ndarray, labels: np.ndarray, roles: np.ndarray, *, seed: int = 0
) -> dict[str, Any]:
    """The metrics.json structure: ``knn``, ``clustering``, ``retrieval`` and ``counts``."""
    # One BLAS / OpenMP thread: the products here are small or overlapped with numpy work in
    # a second thread, and idle-spinning pools made the whole 1.5x slower on a busy 2-core box.
    with threadpool_limits(limits=1):
        return _evaluate(embeddings, labels, roles, seed)


def _evaluate(embeddings, labels, roles, seed: int) -> dict[str, Any]:
    x, y, r = _check(embeddings, labels, roles)
    ref = np.flatnonzero(r == "labeled")
    test = np.flatnonzero(r == "test")
    if len(ref) == 0:
        raise RsdmlError("evaluation needs images with role 'labeled' (kNN references); none found")
    if len(test) == 0:
        raise RsdmlError("evaluation needs images with role 'test' (queries); none found")
    if (y[test] < 0).all() and y[ref].min() >= 0:
        return _evaluate_without_test_labels(x, y, r, ref, test, seed)
    if y[ref].min() < 0 or y[test].min() < 0:
        raise RsdmlError("labelled and test images need class ids >= 0")
    x = l2_normalize(x)
    num_classes = int(max(y.max(), 0)) + 1
    present = np.unique(y[test])

    knn: dict[str, Any] = {}
    for k, (pred, _) in knn_predict_many(x[ref], y[ref], x[test], KNN_KS, num_classes).items():
        confusion = np.zeros((num_classes, num_classes), np.int64)
        np.add.at(confusion, (y[test], pred), 1)
        support = confusion.sum(axis=1)
        per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
        knn[f"k{k}"] = {
            "accuracy": float(np.mean(pred == y[test])),
            "macro_f1": float(f1_score(y[test], pred, labels=present, average="macro", zero_division=0)),
            "per_class_accuracy": per_class.tolist(),
        }
        if k == CONFUSION_K:
            knn["confusion_matrix"] = confusion.tolist()

    retrieval = {
        "labeled": retrieval_metrics(x[test], y[test], x[ref], y[ref], ks=KS),
        "archive": retrieval_metrics(x[test], y[test], x, y, query_gallery_index=test, ks=KS),
    }
    counts = {role: int((r == role).sum()) for role in ROLES}
    return _jsonable(
        {
            "knn": knn,
            "clustering": clustering_metrics(x[test], y[test], seed=seed),
            "retrieval": retrieval,
            "counts": counts,
            "num_classes": num_classes,
            "seed": seed,
        }
    )


#: What metrics.json and the report say when the test images have no labels (--labels).
NO_TEST_LABELS = (
    "this run was trained from a labels file: no image outside it has a label, so kNN "
    "accuracy, clustering and retrieval scores cannot be measured. Shown instead: how the "
    "unlabelled images are predicted per class (nearest class mean, as `rsdml predict` "
    "predicts them), and "
    "the training curves and collapse diagnostics; `rsdml predict RUN DATA --out FILE.csv` "
    "lists each image's predicted class, least certain first, to review"
)


def _evaluate_without_test_labels(x, y, r, ref, test, seed: int) -> dict[str, Any]:
    """The label-free part of the evaluation: the unlabelled images' classes per class, as
    ``rsdml predict`` gives them (nearest class mean)."""
    from rsdml.evaluation.prototypes import prototypes

    x = l2_normalize(x)
    num_classes = int(y.max()) + 1
    # the class `rsdml predict` gives (its temperature changes no argmax)
    pred = (x[test] @ prototypes(x[ref], y[ref], num_classes).T).argmax(axis=1)
    return _jsonable({
        "test_labels": False,
        "note": NO_TEST_LABELS,
        "predicted_per_class": np.bincount(pred, minlength=num_classes).tolist(),
        "labeled_per_class": np.bincount(y[ref], minlength=num_classes).tolist(),
        "counts": {role: int((r == role).sum()) for role in ROLES},
        "num_classes": num_classes,
        "seed": seed,
    })


def headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat headline numbers (for logs, tables and comparisons); missing parts are skipped."""
    out: dict[str, float] = {}
    knn = metrics.get("knn", {})
    for k, name in ((10, "knn_acc"), (1, "knn_acc_k1"), (5, "knn_acc_k5")):
        if f"k{k}" in knn:
            out[name] = knn[f"k{k}"]["accuracy"]
    if "k10" in knn:
        out["macro_f1"] = knn["k10"]["macro_f1"]
    clustering = metrics.get("clustering", {})
    for src, name in (("accuracy", "cluster_acc"), ("nmi", "nmi"), ("ari", "ari")):
        if src in clustering:
            out[name] = clustering[src]
    names = ("map", "map_at_20", "p_at_10", "map_at_r", "r_precision", "anmrr")
    for gallery, prefix in (("labeled", ""), ("archive", "archive_")):
        part = metrics.get("retrieval", {}).get(gallery, {})
        for name in names:
            if name in part:
                out[prefix + name] = part[name]
    for name in ("copy_top1", "copy_mrr"):
        if name in metrics.get("copies", {}):
            out[name] = metrics["copies"][name]
    return {k: (float("nan") if v is None else float(v)) for k, v in out.items()}


def save_embeddings(
    path: str | Path, embeddings: np.ndarray, labels: np.ndarray, roles: np.ndarray, paths
) -> None:
    """Write ``embeddings.npz`` atomically (no pickles: roles and paths are unicode arrays)."""
    x, y, r = _check(embeddings, labels, roles)
    p = np.asarray([str(s) for s in paths], dtype=str)
    if len(p) != len(x):
        raise RsdmlError(f"{len(x)} embeddings but {len(p)} paths; pass one path per image")
    path = Path(path)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_npz(path, embeddings=x, labels=y, roles=r, paths=p)


def load_embeddings(path: str | Path) -> EmbeddingSet:
    """Read an ``embeddings.npz`` written by :func:`save_embeddings`."""
    path = Path(path)
    if not path.is_file():
        raise RsdmlError(f"{path} not found; run `rsdml evaluate RUN` to create it")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"embeddings", "labels", "roles", "paths"} - set(data.files)
            if missing:
                raise RsdmlError(f"{path} lacks {', '.join(sorted(missing))}; re-run `rsdml evaluate`")
            return EmbeddingSet(
                data["embeddings"].astype(np.float32, copy=False),
                data["labels"].astype(np.int64, copy=False),
                data["roles"].astype(str),
                data["paths"].astype(str),
            )
    except (OSError, ValueError) as exc:
        raise RsdmlError(f"{path} is not a readable embeddings file ({exc}); re-run `rsdml evaluate`") from exc


def write_evaluation(
    eval_dir: str | Path,
    embeddings: np.ndarray,
    labels: np.ndarray,
    roles: np.ndarray,
    paths,
    class_names: list[str],
    *,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``embeddings.npz`` and ``metrics.json`` under ``eval_dir``; return the metrics.
    ``extra``: parts measured elsewhere (``copies``: the copy-detection measure)."""
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    save_embeddings(eval_dir / "embeddings.npz", embeddings, labels, roles, paths)
    metrics = evaluate_embeddings(embeddings, labels, roles, seed=seed)
    metrics.update(extra or {})
    metrics["class_names"] = [str(c) for c in class_names]
    metrics["headline"] = headline_metrics(metrics)
    metrics = _jsonable(metrics)
    text = json.dumps(metrics, indent=1, allow_nan=False) + "\n"
    eval_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(eval_dir / "metrics.json", text)
    return metrics


# ---------------------------------------------------------------------------- helpers
def _check(embeddings, labels, roles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels).ravel()
    r = np.asarray(roles).astype(str).ravel()
    if x.ndim != 2:
        raise RsdmlError(f"embeddings must be N x D, got shape {x.shape}")
    if not (len(x) == len(y) == len(r)):
        raise RsdmlError(
            f"{len(x)} embeddings, {len(y)} labels and {len(r)} roles; pass one of each per image"
        )
    if len(y) and not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise RsdmlError("labels must be whole class ids")
    bad = sorted(set(np.unique(r)) - set(ROLES))
    if bad:
        raise RsdmlError(f"unknown role(s) {', '.join(bad)}; roles are {', '.join(ROLES)}")
    return x, y.astype(np.int64), r


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars -> Python, NaN/inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj
