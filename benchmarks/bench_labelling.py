"""The labelling curve: rsdml's suggestions against random choice, rounds of suggest -> label
-> train, with an oracle that answers from the true classes (the class folders).

Per seed and arm, the labelled set grows over the budgets (labels per class x classes in
total, not per class: the arm decides which images, the oracle labels them); each round trains
a fast-mode run (``--freeze-backbone``, EfficientNet-Lite0, ``--method``: by default fast
mode's, the consistency method on cached views) with ``rsdml train --labels`` and
scores every image *not* labelled, with the oracle's classes:

- ``predict``: the accuracy of the class ``rsdml predict`` gives it (the nearest class
  prototype, the mean embedding of a class's labelled images): what a user of the loop gets;
- ``knn1`` and ``knn``: kNN against the labelled images with K = 1 and K = 10 (distance-
  weighted, as the evaluation votes). With one or two labels a class K = 10 reaches past a
  class's own labels, so classes with more labels outvote the nearest one: ``knn`` then
  measures how evenly the labels fell more than the embedding (docs/labelling.md).

The same three on the pretrained trunk's features (``*_trunk``) show what training added. Arms:

- ``rsdml``: ``rsdml suggest`` as a user runs it: the cold-start default (TypiClust on the
  pretrained trunk's features) for the first round, then ``--run`` (the previous round's run:
  uncertain and diverse) for the next ones;
- ``kcentre``: k-centre greedy every round (the other cold-start candidate), on the trunk's
  features in the first round and the run's embeddings later;
- ``random``: the labelled images drawn at random (seeded), as ``--labeled-fraction`` does.

Prints one JSON object (every round's numbers, then per budget the mean of the seeds).

    python benchmarks/bench_labelling.py --data ../shared/data/AID --out /tmp/labelling \
        [--budgets 1 2 5 10] [--seeds 0 1 2] [--arms rsdml kcentre random] [--method M] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(C.DEFAULT_DATA))
    ap.add_argument("--out", required=True, help="scratch folder for the label files and runs")
    ap.add_argument("--budgets", type=float, nargs="+", default=[1, 2, 5, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=["rsdml", "kcentre", "random"],
                    choices=("rsdml", "kcentre", "random", "typiclust"))
    ap.add_argument("--image-size", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--method", default="auto",
                    help="the training method of every round (auto: fast mode's default, the "
                         "consistency method on cached views)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more training options of every round, as in a config file "
                         "(e.g. propagation_weight=1)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="a small synthetic set; numbers mean nothing")
    return ap.parse_args()


def oracle(path: str) -> str:
    """The true class of an image: its class folder."""
    return path.split("/")[0]


def scores(x: np.ndarray, paths: list[str], labels: dict[str, str]) -> dict[str, float]:
    """Accuracies on every image not labelled, with the oracle's classes: the nearest class
    prototype (``rsdml predict``'s class), kNN with K = 1 and K = 10."""
    from rsdml.evaluation.knn import knn_accuracy
    from rsdml.evaluation.prototypes import prototype_predict

    classes = sorted({oracle(p) for p in paths})
    y = np.asarray([classes.index(oracle(p)) for p in paths])
    lab = np.asarray([p in labels for p in paths])
    pred = prototype_predict(x[lab], y[lab], x[~lab], len(classes), 0.05).argmax(axis=1)
    return {"predict": C.rnd(float(np.mean(pred == y[~lab]))),
            "knn1": C.rnd(knn_accuracy(x[lab], y[lab], x[~lab], y[~lab], k=1)),
            "knn": C.rnd(knn_accuracy(x[lab], y[lab], x[~lab], y[~lab], k=10))}


def choose(arm: str, root: Path, labels_csv: Path, n: int, run: Path | None, seed: int,
           device: str) -> list[str]:
    from rsdml.labelling.suggest import suggest_for_folder

    strategy = {"rsdml": "auto", "kcentre": "kcentre", "random": "random",
                "typiclust": "typiclust"}[arm]
    _, picks, _ = suggest_for_folder(root, n, run=run if arm != "random" else None,
                                     labels_file=labels_csv, strategy=strategy, seed=seed,
                                     device=device, quiet=True)
    return picks


def train_round(root: Path, labels_csv: Path, out: Path, args: argparse.Namespace,
                seed: int) -> None:
    import yaml

    from rsdml.config import TrainConfig
    from rsdml.training.methods.params import param_classes
    from rsdml.training.runner import train

    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    cfg = TrainConfig.from_dict(
        {"data": str(root), "labels": str(labels_csv), "out": str(out), "seed": seed,
         "backbone": "efficientnet_lite0", "freeze_backbone": True, "method": args.method,
         "image_size": args.image_size, "epochs": args.epochs, "eval_every": args.epochs,
         "checkpoint_every": args.epochs, "device": args.device, "report": False,
         "quiet": True, **extra}, params=param_classes())
    train(cfg)


def main() -> None:
    args = parse()
    from rsdml.evaluation.suite import load_embeddings
    from rsdml.labelling.labels import write_labels
    from rsdml.training.archive_vectors import archive_images, trunk_vectors

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.data)
    if args.quick:
        from rsdml.data.synthetic import make_synthetic_scenes

        root = out / "synthetic"
        make_synthetic_scenes(root, n_classes=4, per_class=20, size=32, seed=0)
        args.image_size, args.epochs, args.budgets = 32, 5, [1, 2]
    root, paths = archive_images(root)
    n_classes = len({oracle(p) for p in paths})
    trunk = trunk_vectors(root, image_size=args.image_size, device=args.device, quiet=True)
    C.log(f"{len(paths)} images, {n_classes} classes; trunk features ready")
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for arm in args.arms:
            labels: dict[str, str] = {}
            run: Path | None = None
            for b in args.budgets:
                t0 = time.monotonic()
                name = f"{arm}-s{seed}-b{b:g}"
                labels_csv = out / f"{name}.csv"
                write_labels(labels_csv, labels)
                n = int(round(b * n_classes)) - len(labels)
                for p in choose(arm, root, labels_csv, n, run, seed, args.device):
                    labels[p] = oracle(p)
                write_labels(labels_csv, labels)
                run = out / name
                train_round(root, labels_csv, run, args, seed)
                emb = load_embeddings(run / "eval" / "embeddings.npz")
                order = {p: i for i, p in enumerate(emb.paths.tolist())}
                x = emb.embeddings[[order[p] for p in paths]]
                row = {"seed": seed, "arm": arm, "per_class": b, "labels": len(labels),
                       "classes_covered": len(set(labels.values())),
                       **scores(x, paths, labels),
                       **{f"{k}_trunk": v for k, v in scores(trunk.vectors, paths, labels).items()},
                       "seconds": round(time.monotonic() - t0, 1)}
                rows.append(row)
                C.log(json.dumps(row))
                with open(out / "rows.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
    summary: dict[str, Any] = {}
    for arm in args.arms:
        for b in args.budgets:
            sel = [r for r in rows if r["arm"] == arm and r["per_class"] == b]
            summary[f"{arm}@{b:g}"] = {k: C.rnd(float(np.mean([r[k] for r in sel])))
                                       for k in ("predict", "knn1", "knn", "predict_trunk",
                                               "knn_trunk", "classes_covered")}
    C.emit({"data": str(root), "images": len(paths), "classes": n_classes,
            "image_size": args.image_size, "epochs": args.epochs, "method": args.method,
            "set": args.set,
            "rows": rows,
            "mean": summary})


if __name__ == "__main__":
    main()
