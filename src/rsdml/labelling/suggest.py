"""``rsdml suggest``: which images to label next.

With few labels, *which* images are labelled matters most. Strategies (``STRATEGIES``):

- ``typiclust`` (Hacohen, Dekel & Weinshall, ICML 2022): k-means with (labelled + n) clusters;
  from each of the n largest clusters holding no labelled image, the most *typical* image
  (the inverse mean distance to its 20 nearest neighbours in the cluster). Typical and
  diverse: the default of a cold start (measured against k-centre on AID, docs/results.md).
- ``kcentre`` (Sener & Savarese, ICLR 2018): greedily the image farthest from every labelled
  or chosen one (covers the space; at very low budgets it picks outliers).
- ``uncertain`` (needs predictions: a trained run and labels): the TypiClust clusters for
  diversity, and in each chosen cluster, of its more typical half, the image whose predicted
  class is least sure (smallest margin between the two most probable classes). The clusters
  are taken in the order of their labels *and of their class's*: a cluster's own labelled
  images count 2, every labelled (or already chosen) image of the class most of its images
  are labelled or predicted as counts 1. Plain TypiClust counts only the cluster's own, so a
  class that k-means splits into several clusters got a label in each, and the labels piled
  up in a few classes (3-4 a class beside classes with 1, at 2 a class on AID).
- ``random``: the baseline.

Labelled images are never suggested again. Vectors are unit rows; k-means runs on their top
principal components (at most 64) to stay fast on 100,000 images.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from rsdml.errors import RsdmlError
from rsdml.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from rsdml.training.archive_vectors import ArchiveVectors

STRATEGIES = ("auto", "typiclust", "kcentre", "uncertain", "random")
SUGGEST_COLUMNS = ("rank", "path", "strategy", "predicted", "probability")
TYPICALITY_K = 20
PCA_DIMS = 64
MIN_CLUSTER = 5  # TypiClust skips clusters smaller than this while larger ones are left


def _reduce(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    d = min(PCA_DIMS, x.shape[1], max(1, len(x) - 1))
    if d >= x.shape[1]:
        return x.astype(np.float32)
    return PCA(d, random_state=seed, svd_solver="randomized").fit_transform(x).astype(np.float32)


def _clusters(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    k = max(1, min(k, len(z)))
    if k <= 50:
        km = KMeans(k, n_init=1, random_state=seed)
    else:  # TypiClust too: full k-means is slow for many clusters
        km = MiniBatchKMeans(k, n_init=1, random_state=seed, batch_size=max(1024, 3 * k))
    return np.asarray(km.fit_predict(z), dtype=np.int64)


def _typicality(z: np.ndarray) -> np.ndarray:
    """1 / mean Euclidean distance to the K nearest others (K = min(20, size - 1))."""
    import faiss

    n = len(z)
    if n < 2:
        return np.ones(n)
    k = min(TYPICALITY_K, n - 1)
    if n <= 2000:  # a cluster: all pairs in numpy, no index to build
        sq = (z * z).sum(axis=1)
        d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0))
        np.fill_diagonal(d, np.inf)
        return 1.0 / (np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1) + 1e-8)
    index = faiss.IndexFlatL2(z.shape[1])
    index.add(np.ascontiguousarray(z, np.float32))
    d2, _ = index.search(np.ascontiguousarray(z, np.float32), k + 1)
    near = np.sqrt(np.maximum(d2[:, 1:], 0))  # the first is the image itself
    return 1.0 / (near.mean(axis=1) + 1e-8)


def _class_of_clusters(assign: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    """The class most of each cluster's images have (labelled or predicted)."""
    votes = np.zeros((k, int(classes.max()) + 1), np.int64)
    np.add.at(votes, (assign, classes), 1)
    return votes.argmax(axis=1)


def typiclust(x: np.ndarray, labelled: np.ndarray, n: int, seed: int = 0,
              margin: np.ndarray | None = None,
              classes: np.ndarray | None = None) -> list[int]:
    """TypiClust; with ``margin`` (per image, small = unsure) the ``uncertain`` variant.
    ``classes`` (per image: its label, or its predicted class; ints) spreads the picks over the
    classes as well as over the clusters (the module's docstring says how)."""
    z = _reduce(x, seed)
    assign = _clusters(z, len(labelled) + n, seed)
    k = int(assign.max()) + 1
    size = np.bincount(assign, minlength=k)
    covered = np.bincount(assign[labelled], minlength=k) if len(labelled) else np.zeros(k, int)
    if classes is not None:
        classes = np.asarray(classes, np.int64)
        of_cluster = _class_of_clusters(assign, classes, k)
        per_class = np.bincount(classes[labelled], minlength=int(classes.max()) + 1)
    taken = np.zeros(len(x), bool)
    taken[labelled] = True
    out: list[int] = []
    while len(out) < n:
        free = np.flatnonzero(size - covered > 0)  # clusters with an image left to give
        if not len(free):
            break
        big = free[size[free] >= MIN_CLUSTER]
        pool = big if len(big) else free
        # fewest labelled images first (with classes: 2 a label of the cluster's own, 1 a label
        # of its class), then the largest (ties: lower cluster id)
        labels_near = covered[pool] if classes is None else \
            2 * covered[pool] + per_class[of_cluster[pool]]
        c = pool[np.lexsort((-size[pool], labels_near))[0]]
        members = np.flatnonzero(assign == c)
        typ = _typicality(z[members])
        cand = ~taken[members]
        if margin is None:
            pick = members[np.flatnonzero(cand)[np.argmax(typ[cand])]]
        else:  # of the more typical half, the least sure prediction
            order = np.flatnonzero(cand)[np.argsort(-typ[cand], kind="stable")]
            half = order[: max(1, (len(order) + 1) // 2)]
            pick = members[half[np.argmin(margin[members[half]])]]
        out.append(int(pick))
        taken[pick] = True
        covered[c] += 1
        if classes is not None:
            per_class[classes[pick]] += 1
    return out


def kcentre(x: np.ndarray, labelled: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """k-centre greedy on unit vectors (the first pick, without labels, at random)."""
    z = x.astype(np.float32)
    rng = np.random.default_rng(seed)
    dist = np.full(len(z), np.inf, np.float32)
    out: list[int] = []
    seeds = list(labelled) if len(labelled) else [int(rng.integers(len(z)))]
    if not len(labelled):
        out.append(seeds[0])
    for i in seeds:
        dist = np.minimum(dist, np.linalg.norm(z - z[i], axis=1))
    dist[labelled] = -1
    while len(out) < n:
        i = int(np.argmax(dist))
        if dist[i] < 0:
            break
        out.append(i)
        dist = np.minimum(dist, np.linalg.norm(z - z[i], axis=1))
        dist[out] = -1
    return out[:n]


def random_choice(x: np.ndarray, labelled: np.ndarray, n: int, seed: int = 0) -> list[int]:
    free = np.setdiff1d(np.arange(len(x)), labelled)
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.permutation(free)[:n]]


def resolve_strategy(strategy: str, has_predictions: bool) -> str:
    """``auto``: ``uncertain`` with a run's predictions, ``typiclust`` without."""
    if strategy not in STRATEGIES:
        raise RsdmlError(f"--strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if strategy == "auto":
        return "uncertain" if has_predictions else "typiclust"
    if strategy == "uncertain" and not has_predictions:
        raise RsdmlError("--strategy uncertain needs predictions: give --run RUN (a trained run) "
                         "and --labels FILE.csv, or use --strategy typiclust")
    return strategy


def suggest(x: np.ndarray, labelled: np.ndarray, n: int, *, strategy: str = "typiclust",
            seed: int = 0, margin: np.ndarray | None = None,
            classes: np.ndarray | None = None) -> list[int]:
    """Indices (rows of ``x``) of ``n`` images to label next, best first; never in ``labelled``.
    ``margin`` and ``classes`` (per image: its label or predicted class) are the predictions
    ``uncertain`` uses."""
    labelled = np.asarray(labelled, np.int64)
    if n < 1:
        raise RsdmlError(f"-n {n}: ask for at least 1 suggestion")
    if len(labelled) >= len(x):
        raise RsdmlError("every image is labelled already: nothing left to suggest")
    n = min(n, len(x) - len(labelled))
    # One thread: the products are small, and idle-spinning OpenMP / BLAS pools made this
    # orders of magnitude slower on a busy 2-core machine.
    with threadpool_limits(limits=1):
        return _suggest(x, labelled, n, strategy, seed, margin, classes)


def _suggest(x: np.ndarray, labelled: np.ndarray, n: int, strategy: str, seed: int,
             margin: np.ndarray | None, classes: np.ndarray | None) -> list[int]:
    if strategy == "typiclust":
        return typiclust(x, labelled, n, seed)
    if strategy == "uncertain":
        if margin is None:
            raise RsdmlError("--strategy uncertain needs predictions (--run and --labels)")
        return typiclust(x, labelled, n, seed, margin=margin, classes=classes)
    if strategy == "kcentre":
        return kcentre(x, labelled, n, seed)
    if strategy == "random":
        return random_choice(x, labelled, n, seed)
    raise RsdmlError(f"--strategy {strategy!r} is not one of {', '.join(STRATEGIES[1:])}")


def suggestions_csv(paths: list[str], picks: list[int], strategy: str,
                    predicted: dict[int, tuple[str, float]] | None = None) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUGGEST_COLUMNS)
    for rank, i in enumerate(picks, start=1):
        cls, prob = (predicted or {}).get(i, ("", float("nan")))
        w.writerow((rank, paths[i], strategy, cls, "" if prob != prob else f"{prob:.4f}"))
    return buf.getvalue().encode("utf-8")


def read_suggestions(path: str | Path, images: Iterable[str] | None = None) -> list[str]:
    """The image paths of a suggestions CSV (``rsdml suggest --out``), in rank order;
    ``images``: the data folder's, and a path not among them refuses the file."""
    path = Path(path)
    if not path.is_file():
        raise RsdmlError(f"--suggestions {path} does not exist; make it with `rsdml suggest`")
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RsdmlError(f"--suggestions {path} cannot be read ({type(e).__name__}); make it "
                         "again with `rsdml suggest`") from None
    if rows and "path" not in rows[0]:
        raise RsdmlError(f"--suggestions {path} has no path column; make it with `rsdml suggest`")
    paths = [r["path"] for r in rows if r.get("path")]
    if images is not None:
        from rsdml.labelling.labels import check_under_data

        check_under_data(paths, images, f"--suggestions {path}",
                         "make them again with `rsdml suggest DATA` for this folder")
    return paths


def write_suggestions(path: str | Path, data: bytes) -> None:
    path = Path(path)
    if not path.parent.is_dir():
        raise RsdmlError(f"--out folder {path.parent} does not exist; create it first")
    atomic_write_bytes(path, data)


def has_predictions(from_run: bool, labels: dict[str, str]) -> bool:
    """Whether ``uncertain`` can run: a trained run's vectors and labels of 2+ classes."""
    return from_run and len(set(labels.values())) >= 2


def choose(vec: ArchiveVectors, labels: dict[str, str], n: int, *, strategy: str = "auto",
           seed: int = 0) -> tuple[list[int], str, dict[int, tuple[str, float]]]:
    """Rows of ``vec`` to label next, the strategy used and, with a run's vectors and labels of
    at least 2 classes, the predicted (class, probability) of each row: ``auto`` is then
    ``uncertain``, spread over the classes. ``rsdml suggest`` and the labelling page's own
    queue both choose here."""
    from rsdml.labelling.predict import predict

    has_pred = has_predictions(vec.from_run, labels)
    strategy = resolve_strategy(strategy, has_pred)
    where = {p: i for i, p in enumerate(vec.paths)}
    labelled = np.asarray(sorted(where[p] for p in labels if p in where), np.int64)
    margin = classes = None
    predicted: dict[int, tuple[str, float]] = {}
    if has_pred:
        pred = predict(vec.vectors, vec.paths, labels)
        margin = np.ones(len(vec.paths))
        rows = np.asarray([where[p] for p in pred.paths], np.int64)
        margin[rows] = pred.margin
        classes = np.zeros(len(vec.paths), np.int64)
        classes[rows] = pred.predicted
        index = {c: i for i, c in enumerate(pred.classes)}
        classes[labelled] = [index[labels[vec.paths[i]]] for i in labelled]
        for r, c, pr in zip(rows, pred.predicted, pred.probability):
            predicted[int(r)] = (pred.classes[c], float(pr))
    picks = suggest(vec.vectors, labelled, n, strategy=strategy, seed=seed, margin=margin,
                    classes=classes)
    return picks, strategy, predicted


def suggest_for_folder(data: str | Path, n: int, *, run: str | Path | None = None,
                       labels_file: str | Path | None = None, strategy: str = "auto",
                       seed: int = 0, device: str = "auto", quiet: bool = False,
                       ) -> tuple[bytes, list[str], str]:
    """What ``rsdml suggest`` computes: (CSV bytes, suggested paths, the strategy used)."""
    from rsdml.labelling.labels import read_labels
    from rsdml.training.archive_vectors import archive_images, run_vectors, trunk_vectors

    root, images = archive_images(data)
    # a --labels file that does not exist is refused, as `train` and `predict` refuse it
    labels = read_labels(labels_file, images, allow_empty=True) if labels_file else {}
    has_pred = has_predictions(run is not None, labels)
    if run is not None and not has_pred and strategy in ("auto", "uncertain"):
        raise RsdmlError("--run needs --labels FILE.csv with labelled images of at least 2 "
                         "classes (the run's predictions use them); without labels drop --run")
    resolve_strategy(strategy, has_pred)  # a wrong --strategy fails before the vectors
    vec = run_vectors(run, root, device=None if device == "auto" else device, quiet=quiet) \
        if run is not None else trunk_vectors(root, device=device, quiet=quiet)
    picks, strategy, predicted = choose(vec, labels, n, strategy=strategy, seed=seed)
    return (suggestions_csv(vec.paths, picks, strategy, predicted),
            [vec.paths[i] for i in picks], strategy)
