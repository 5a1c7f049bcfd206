"""Time the memory check's activation probe (``rsdml.training.memory.activation_bytes``), which
runs before the first training step: one forward pass of a few images per image size.

Moved here from tests/training/test_memory.py, which asserted "< 2.0 s" and failed on a loaded
2-core machine (2.65 s): no test asserts wall time. Prints one JSON object per backbone and size.

    python benchmarks/bench_memory_probe.py [--sizes 32 64 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from rsdml.config import TrainConfig
from rsdml.models.embedding import build_model
from rsdml.training.memory import activation_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["resnet18"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cpu = torch.device("cpu")
    for backbone in args.backbones:
        model = build_model(TrainConfig(backbone=backbone, pretrained="none"))
        model.train()
        for size in args.sizes:
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                n = activation_bytes(model, size, cpu, None, True)
                times.append(time.perf_counter() - t0)
            print(json.dumps({"backbone": backbone, "image_size": size, "bytes": n,
                              "seconds_min": round(min(times), 4),
                              "seconds_median": round(sorted(times)[len(times) // 2], 4),
                              "load_1min": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
