"""The allocator setting of the compute commands (rsdml.allocator): glibc's defaults against
freed memory kept for reuse in the network passes, on the two CPU hot paths.

Each measurement runs in a fresh process (the setting is process-wide), once with
``RSDML_MALLOC=system`` and once without: a training step (forward, a stand-in loss, backward,
SGD) of each backbone at 128 px on a batch of 128, randomly initialised, the layout rsdml
uses; and fast mode's view build (12 views an image, EfficientNet-Lite0 at 150 px, cut below
its last 2 stages, 4 chunks of 64 images). Prints one JSON object: seconds a step or images a
second, minor page faults, system CPU seconds and peak RSS, and the speed-ups.

    python benchmarks/bench_allocator.py [--steps 3] [--backbones resnet18 efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _usage() -> tuple[float, float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_stime, r.ru_maxrss


def child_step(backbone: str, steps: int) -> dict[str, Any]:
    import torch

    from rsdml.config import TrainConfig
    from rsdml.models.embedding import build_model
    from rsdml.training.inputs import uses_channels_last

    torch.manual_seed(0)
    dev = torch.device("cpu")
    layout = torch.channels_last if uses_channels_last(dev) else torch.contiguous_format
    model = build_model(TrainConfig(backbone=backbone, image_size=128, pretrained="none"))
    model = model.to(memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(128, 3, 128, 128).contiguous(memory_format=layout)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()
        opt.step()

    from rsdml.allocator import kept_memory

    with kept_memory():  # as the trainer's steps run
        step()  # warm-up: the first step grows the heap
        f0, s0, _ = _usage()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        dt = (time.perf_counter() - t) / steps
    f1, s1, rss = _usage()
    return {"seconds_per_step": round(dt, 3), "minor_faults_per_step": int((f1 - f0) / steps),
            "system_cpu_s_per_step": round((s1 - s0) / steps, 2), "peak_rss_gb": round(rss / 2**20, 2)}


def child_views(chunks: int) -> dict[str, Any]:
    import torch

    from rsdml.config import TrainConfig
    from rsdml.data.preprocess import Preprocess
    from rsdml.models.embedding import build_model
    from rsdml.training.views import CHUNK, ViewPlan, _view_fill

    torch.manual_seed(0)
    model = build_model(TrainConfig(backbone="efficientnet_lite0", image_size=150,
                                    pretrained="none")).eval()
    fill = _view_fill(model, torch.device("cpu"), ViewPlan(8, 4, 2), Preprocess(150).normalizer(), None)
    images = torch.randint(0, 256, (CHUNK, 3, 150, 150), dtype=torch.uint8)
    from rsdml.allocator import kept_memory

    with torch.inference_mode(), kept_memory():  # as the view build runs
        fill(torch.arange(CHUNK), images)  # warm-up
        f0, s0, _ = _usage()
        t = time.perf_counter()
        for c in range(chunks):
            fill(torch.arange(c * CHUNK, (c + 1) * CHUNK), images)
        dt = time.perf_counter() - t
    f1, s1, rss = _usage()
    return {"images_per_s": round(chunks * CHUNK / dt, 1), "minor_faults_per_image": int((f1 - f0) / (chunks * CHUNK)),
            "system_cpu_s": round(s1 - s0, 1), "peak_rss_gb": round(rss / 2**20, 2)}


def run_child(what: str, arg: str, n: int, system: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RSDML_MALLOC"}
    if system:
        env["RSDML_MALLOC"] = "system"
    out = subprocess.run([sys.executable, __file__, "--child", what, arg, str(n)], env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "efficientnet_lite0"])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, arg, n = args.child
        res = child_step(arg, int(n)) if what == "step" else child_views(int(n))
        print(json.dumps({**res, "kept": C.KEPT_MEMORY}))
        return
    import torch

    results: dict[str, Any] = {"machine": C.machine_info(torch.device("cpu")), "cases": {}}
    cases = [("step", b, args.steps) for b in args.backbones] + [("views", "efficientnet_lite0", args.chunks)]
    for what, arg, n in cases:
        system = run_child(what, arg, n, True)
        kept = run_child(what, arg, n, False)
        speed = (system["seconds_per_step"] / kept["seconds_per_step"] if what == "step"
                 else kept["images_per_s"] / system["images_per_s"])
        results["cases"][f"{what}:{arg}"] = {"system": system, "kept": kept,
                                             "speedup": round(speed, 2)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
