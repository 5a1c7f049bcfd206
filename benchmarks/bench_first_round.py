"""The labelling loop's first round, on held-out labelled images only: which training options
serve labels that a cold start chose (so unevenly spread over the classes).

`rsdml tune --holdout` keeps the same number of labels in every class; the loop's first round
does not: TypiClust's 30 picks cover about 25 of AID's 30 classes, some twice. kNN with K = 10
then lets a class with two labels outvote an image's nearest label, a regime the even folds
never show. Here, per seed, the split `rsdml train --labeled-fraction F --seed S` makes gives a
pool of labelled images; the cold-start default (TypiClust on the pretrained trunk's features)
picks ``--picks`` of them to train on, the rest of the pool is held out (``test``), and every
other image is unlabelled (its label never read). Each candidate (``--candidate NAME
KEY=VALUE ...``, as in a config file; none: the defaults) trains a fast-mode run on that split;
the held-out images give kNN K = 10 / K = 1 and copy top-1 (the run's final metrics).

Prints one JSON object: every run's numbers, then per candidate the mean of the seeds.

    python benchmarks/bench_first_round.py --data ../shared/data/AID --out /tmp/first-round \\
        --candidate default --candidate m075w2 propagation_margin=0.75 instance_weight=2
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
    ap.add_argument("--out", required=True, help="scratch folder for the splits and runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labeled-fraction", type=float, default=0.05,
                    help="the pool: the labelled images of this split (default 0.05)")
    ap.add_argument("--picks", type=int, default=30,
                    help="labels the cold start chooses from the pool (default 30: 1 a class)")
    ap.add_argument("--image-size", type=int, default=150)
    ap.add_argument("--candidate", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                    help="a candidate: a name, then training options (repeatable)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="a small synthetic set; numbers mean nothing")
    return ap.parse_args()


def first_round_split(root: Path, seed: int, fraction: float, picks: int,
                      trunk: Any) -> tuple[Any, int]:
    """The seed's split with the pool's cold-start picks labelled, the rest of the pool held
    out; and how many classes the picks cover."""
    from rsdml.config import TrainConfig
    from rsdml.data.split import Split
    from rsdml.labelling.suggest import suggest
    from rsdml.training.runner import build_split

    base = build_split(TrainConfig(data=str(root), labeled_fraction=fraction, seed=seed,
                                   quiet=True))
    pool = base.index("labeled")
    row = {p: i for i, p in enumerate(trunk.paths)}
    x = trunk.vectors[[row[base.paths[i]] for i in pool]]
    chosen = pool[suggest(x, np.zeros(0, np.int64), picks, strategy="typiclust", seed=seed)]
    roles = np.full(len(base.paths), "unlabeled", dtype=object)
    roles[pool] = "test"
    roles[chosen] = "labeled"
    labels = base.labels.copy()
    labels[roles == "unlabeled"] = 0  # the unlabelled images' labels never leave here
    split = Split("inductive", list(base.classes), list(base.paths), labels,
                  roles.astype(str))
    return split, len(set(base.labels[chosen].tolist()))


def main() -> None:
    args = parse()
    import yaml

    from rsdml.config import TrainConfig
    from rsdml.data.split import write_split_csv
    from rsdml.training.archive_vectors import archive_images, trunk_vectors
    from rsdml.training.methods.params import param_classes
    from rsdml.training.runner import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.data)
    epochs: dict[str, Any] = {}
    if args.quick:
        from rsdml.data.synthetic import make_synthetic_scenes

        root = out / "synthetic"
        make_synthetic_scenes(root, n_classes=4, per_class=20, size=32, seed=0)
        args.image_size, args.labeled_fraction, args.picks = 32, 0.5, 4
        epochs = {"epochs": 2}
    root, paths = archive_images(root)
    trunk = trunk_vectors(root, image_size=args.image_size, device=args.device, quiet=True)
    candidates = {c[0]: {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in c[1:])}
                  for c in (args.candidate or [["default"]])}
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        split, covered = first_round_split(root, seed, args.labeled_fraction, args.picks, trunk)
        split_csv = out / f"split-s{seed}.csv"
        write_split_csv(split, split_csv)
        for name, options in candidates.items():
            t0 = time.monotonic()
            run = out / f"{name}-s{seed}"
            if not (run / "final_metrics.json").is_file():
                train(TrainConfig.from_dict(
                    {"data": str(root), "split": str(split_csv), "protocol": "inductive",
                     "out": str(run), "seed": seed, "backbone": "efficientnet_lite0",
                     "freeze_backbone": True, "method": "hr-match",
                     "image_size": args.image_size, "report": False, "quiet": True,
                     "device": args.device, **epochs, **options}, params=param_classes()))
            m = json.loads((run / "final_metrics.json").read_text())
            r = {"candidate": name, "seed": seed, "classes_covered": covered,
                 "held_out": int((split.roles == "test").sum()),
                 "knn": C.rnd(m["knn_acc"]), "knn1": C.rnd(m["knn_acc_k1"]),
                 "copy_top1": C.rnd(m["copy_top1"]),
                 "seconds": round(time.monotonic() - t0, 1)}
            rows.append(r)
            C.log(json.dumps(r))
    mean = {name: {k: C.rnd(float(np.mean([r[k] for r in rows if r["candidate"] == name])))
                   for k in ("knn", "knn1", "copy_top1", "classes_covered")}
            for name in candidates}
    C.emit({"data": str(root), "images": len(paths), "seeds": args.seeds,
            "labeled_fraction": args.labeled_fraction, "picks": args.picks,
            "image_size": args.image_size, "candidates": candidates, "rows": rows,
            "mean": mean})


if __name__ == "__main__":
    main()
