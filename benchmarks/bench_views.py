"""What fast mode's cached views cost, per cut of the trunk (``--view-stages``): the time of the
stages below the cut (once per image) and of the stages above it for every view (12 by
default), per batch of 64 images, with the allocator setting the compute commands use.
Random weights: the cost does not depend on them.

    python benchmarks/bench_views.py [--backbone efficientnet_lite0] [--size 150] [--stages 1 2 3] [--compile]

``--compile``: the same with both parts compiled (torch.compile, inductor), and the seconds
the first call took (compiling), to weigh against what a build of N images saves.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    import torch

    from rsdml import allocator
    from rsdml.config import TrainConfig
    from rsdml.data.activation_views import symmetry
    from rsdml.models.embedding import build_model
    from rsdml.models.stages import TrunkCut

    allocator.enable()
    layout = torch.channels_last
    model = build_model(TrainConfig(backbone=args.backbone, pretrained="none")).eval()
    model = model.to(memory_format=layout)
    x = torch.randn(64, 3, args.size, args.size).contiguous(memory_format=layout)
    rows = []
    for stages in args.stages:
        cut = TrunkCut(model.trunk, stages)
        bottom, top = cut.bottom, cut.top
        if args.compile:
            bottom, top = torch.compile(bottom), torch.compile(top)
        below = above = 0.0
        with torch.inference_mode(), allocator.kept_memory():
            for it in range(args.repeats + 1):  # the first is a warm-up (and compiles)
                t0 = time.perf_counter()
                a = bottom(x)
                t1 = time.perf_counter()
                for j in range(args.views):
                    top(symmetry(a, j % 8).contiguous(memory_format=layout))
                t2 = time.perf_counter()
                if it:
                    below, above = below + t1 - t0, above + t2 - t1
                else:
                    first = t2 - t0
        row = {"view_stages": stages, "activation": list(a.shape[1:]),
               "compiled": args.compile, "first_call_s": C.rnd(first, 1),
               "below_ms": C.rnd(1000 * below / args.repeats, 1),
               "views_above_ms": C.rnd(1000 * above / args.repeats, 1),
               # in whole trunk passes (below the cut + one view above it)
               "trunk_passes": C.rnd((below + above) / (below + above / args.views), 2)}
        rows.append(row)
        C.log(row)
    C.emit({"backbone": args.backbone, "image_size": args.size, "batch": 64,
            "views": args.views, "rows": rows})


if __name__ == "__main__":
    main()
