"""Which features should a cold start cluster? TypiClust's first suggestions on the pretrained
trunk's features at several image sizes, scored by the classes they cover (the labels of the
chosen images only, what a user sees while labelling them; nothing else is looked at).

Features per size: ``image`` (the first cached view, the image itself: what ``rsdml suggest``
uses, at fast mode's size) and ``symmetries`` (the mean of its 8 symmetric views). Prints one
JSON object: per size, feature kind and number of suggestions, the classes covered per seed.

    python benchmarks/bench_cold_start.py --data ../shared/data/AID [--sizes 128 150] \
        [--per-class 1 2] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(C.DEFAULT_DATA))
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 150])
    ap.add_argument("--per-class", type=float, nargs="+", default=[1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from rsdml.labelling.suggest import suggest
    from rsdml.training.archive_vectors import archive_images, trunk_pass
    from rsdml.vectors import l2_normalize

    root, paths = archive_images(args.data)
    truth = [p.split("/")[0] for p in paths]  # class folders: only the chosen ones are read
    n_classes = len(set(truth))
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        t0 = time.monotonic()
        # the views as the cold start and fast-mode training build them
        v = np.asarray(trunk_pass(root, paths, image_size=size, device=args.device,
                                  quiet=True).views(), np.float32)
        C.log(f"{size} px: views ready in {time.monotonic() - t0:.0f} s")
        kinds = {"image": l2_normalize(v[:, 0]), "symmetries": l2_normalize(v[:, :8].mean(1))}
        for kind, x in kinds.items():
            for b in args.per_class:
                n = int(round(b * n_classes))
                covered = [len({truth[i] for i in suggest(x, np.zeros(0, np.int64), n,
                                                          strategy="typiclust", seed=s)})
                           for s in args.seeds]
                row = {"image_size": size, "features": kind, "per_class": b, "suggestions": n,
                       "classes_covered": covered, "mean": C.rnd(float(np.mean(covered)))}
                rows.append(row)
                C.log(row)
    C.emit({"data": str(root), "images": len(paths), "classes": n_classes, "rows": rows})


if __name__ == "__main__":
    main()
