"""Training throughput under torchrun: ranks against threads, and DDP's own overhead.

Prints one JSON object. Each configuration runs rsdml's training step (``Trainer.run_step``:
cache rows -> augmentation -> ResNet-18 + head -> hr-s2dml loss on the global batch -> backward
-> optimiser step; under torchrun the DDP gradient average and the gather of the batch
included) on synthetic scenes, at one global batch (labelled + unlabelled), and reports
images/s of the global batch (untimed warm-up steps first).

CPU (default): ``1x2`` = 1 process x 2 torch threads, ``2x1`` = torchrun 2 ranks x 1 thread,
and ``1x1`` = 1 process x 1 thread; ``efficiency_2x1_vs_1x2`` = 2x1 / 1x2 (the same cores,
split into ranks instead of threads) and ``efficiency_2x1_vs_2_times_1x1`` = 2x1 / (2 x 1x1)
(the usual scaling efficiency per added rank).
CUDA (``--device cuda``, one GPU): ``plain`` = one process without torchrun against ``ddp1``
= torchrun with 1 rank (the DDP code path), ``ddp_overhead`` = 1 - ddp1 / plain.

    python benchmarks/bench_ddp.py [--device cpu|cuda] [--size 64] [--batch 32] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SRC = HERE.parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--size", type=int, default=64, help="image size in pixels")
    ap.add_argument("--batch", type=int, default=32,
                    help="global labelled batch = global unlabelled batch")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--images", type=int, default=480, help="synthetic images (8 classes)")
    ap.add_argument("--configs", nargs="+", default=None,
                    help="CPU: among 1x1 1x2 2x1; CUDA: among plain ddp1 (default: all)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # DATA_DIR, internal
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return ap.parse_args()


# --------------------------------------------------------------------------- one configuration
def worker(args: argparse.Namespace) -> None:
    """One configuration (one process, or one rank under torchrun): time ``run_step``."""
    import torch

    from rsdml.config import TrainConfig
    from rsdml.data.scan import scan_image_folder
    from rsdml.data.split import make_split
    from rsdml.training import distributed
    from rsdml.training.run_folder import RunFolder
    from rsdml.training.runner import build_session, make_trainer

    torch.set_num_threads(args.threads)
    d = distributed.init(args.device)
    cfg = TrainConfig(data=args.worker, pretrained="none", image_size=args.size,
                      batch_size=args.batch, unlabeled_batch_size=args.batch, device=args.device,
                      quiet=True, head_warmup_epochs=0, warmup_epochs=0, bnm_warmup_epochs=0,
                      optimizer="sgd", cache="memory", report=False)
    scan = scan_image_folder(cfg.data, progress=False)
    split = make_split(scan.paths, scan.labels, scan.classes, protocol="transductive",
                       labeled_fraction=0.5, val_fraction=0.0, test_fraction=0.0, seed=0,
                       data_root=scan.root)
    with tempfile.TemporaryDirectory() as tmp:
        session = build_session(cfg, RunFolder(Path(tmp)), split, train=True)
        trainer = make_trainer(session)
        batches = trainer.labeled_batches(0)
        sync = torch.cuda.synchronize if session.device.type == "cuda" else (lambda: None)
        for s in range(args.warmup):
            trainer.run_step(batches[s % len(batches)], 0, 0.5)
        trainer.flush_losses()
        distributed.barrier()
        sync()
        t = time.perf_counter()
        for s in range(args.steps):
            trainer.run_step(batches[(args.warmup + s) % len(batches)], 0, 0.5)
        trainer.flush_losses()
        sync()
        seconds = time.perf_counter() - t
    if d.is_main:
        images = args.steps * 2 * args.batch
        print(json.dumps({"ranks": d.world_size, "threads_per_rank": args.threads,
                          "ddp": d.enabled, "seconds": round(seconds, 3),
                          "images_per_s": round(images / seconds, 2)}), flush=True)
    distributed.teardown()


# --------------------------------------------------------------------------- the comparison
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: argparse.Namespace, data: Path, ranks: int, threads: int,
         torchrun: bool) -> dict[str, Any]:
    own = [str(HERE), "--worker", str(data), "--threads", str(threads), "--device", args.device,
           "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *own]
           if torchrun else [sys.executable, *own])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    print(f"running {ranks} rank(s) x {threads} thread(s){' (torchrun)' if torchrun else ''}",
          file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env, text=True, capture_output=True, check=False)
    if done.returncode != 0:
        sys.exit(f"configuration failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    import torch

    from rsdml.data.synthetic import make_synthetic_scenes

    cpu = args.device == "cpu"
    configs = args.configs or (["1x1", "1x2", "2x1"] if cpu else ["plain", "ddp1"])
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "scenes"
        make_synthetic_scenes(data, n_classes=8, per_class=args.images // 8, size=args.size, seed=0)
        results = {}
        for name in configs:
            if name == "plain":
                results[name] = _run(args, data, 1, 1, torchrun=False)
            elif name == "ddp1":
                results[name] = _run(args, data, 1, 1, torchrun=True)
            else:
                ranks, threads = (int(v) for v in name.split("x"))
                results[name] = _run(args, data, ranks, threads, torchrun=ranks > 1)
    ips = {k: v["images_per_s"] for k, v in results.items()}
    summary: dict[str, Any] = {}
    if {"2x1", "1x2"} <= ips.keys():
        summary["efficiency_2x1_vs_1x2"] = round(ips["2x1"] / ips["1x2"], 3)
    if {"2x1", "1x1"} <= ips.keys():
        summary["efficiency_2x1_vs_2_times_1x1"] = round(ips["2x1"] / (2 * ips["1x1"]), 3)
    if {"plain", "ddp1"} <= ips.keys():
        summary["ddp_overhead"] = round(1 - ips["ddp1"] / ips["plain"], 3)
    print(json.dumps({
        "benchmark": "bench_ddp", "device": args.device, "torch": torch.__version__,
        "cores": os.cpu_count(), "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "setup": {"backbone": "resnet18 (from scratch)", "method": "hr-s2dml", "optimizer": "sgd",
                  "image_size": args.size, "global_batch": f"{args.batch} labelled + {args.batch} "
                  "unlabelled", "steps": args.steps, "warmup": args.warmup,
                  "data": f"synthetic scenes, {args.images} images, 8 classes"},
        "configs": results, **summary,
    }, indent=1))


if __name__ == "__main__":
    main()
