"""Training throughput: rsdml's step from files on disk vs the model's own limit vs the
per-sample PIL pipeline of the reference implementation, in one process and one run.

Prints one JSON object. Per resolution (CPU: 64 and 128 px; CUDA: 64, 128 and 256 px),
images per second (labelled + unlabelled) of:

  (a) the model step alone on random tensors already on the device: forward of the
      128 + 128 batch through ResNet-18 (from scratch) + head, the hr-s2dml loss (margin
      softmax + BNM), backward, SGD step; the limit any input pipeline can reach;
  (b) rsdml's full training step, ``Trainer.run_step`` as the training loop calls it: cache
      rows (in GPU memory, or host -> pinned -> device) -> one batched TrainAugment call ->
      same model step, loss values read back as the loop does; the cache is built (cold,
      timed apart) and loaded back (warm) before timing;
  (c) the reference pipeline: an ImageFolder-style dataset decoding every JPEG with PIL,
      ``paper_pil_transform`` (resize, grayscale p=0.2, jitter 0.4, flip, to tensor,
      normalise) per sample in a DataLoader with one worker per core, then the same step.

and the ratios b/a (target >= 0.9 on CPU, >= 0.8 on CUDA) and b/c. Warm-up steps are not
timed. On CUDA: bf16 autocast, channels_last, pinned memory, as rsdml trains.

    python benchmarks/bench_train.py [--device cpu|cuda] [--sizes 64 128] [--steps N] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(ap)
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="resolutions (default: 64 128 on CPU, 64 128 256 on CUDA)")
    ap.add_argument("--batch", type=int, default=128, help="labelled = unlabelled batch size")
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help="timed steps per part, one value or one per size "
                         "(default: CPU 5 at <=64 px, 3 above; CUDA 30)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps (default: CPU 1, CUDA 5)")
    ap.add_argument("--images", type=int, default=None,
                    help="use this many images of the data set (default: all)")
    ap.add_argument("--parts", default="abc", help="which of a, b, c to run (default: abc)")
    args = ap.parse_args()
    if not args.parts or set(args.parts) - set("abc"):
        ap.error(f"--parts {args.parts!r}: use letters among a, b, c (e.g. ab)")
    if args.quick:
        args.sizes = args.sizes or [32]
        args.batch, args.images = 8, args.images or 240
        args.steps, args.warmup = args.steps or [2], 1 if args.warmup is None else args.warmup
        args.workers = args.workers or 2
    return args


def steps_for(args: argparse.Namespace, size: int, i: int, device: torch.device) -> int:
    if args.steps:
        return args.steps[i] if len(args.steps) > 1 else args.steps[0]
    if device.type == "cuda":
        return 30
    return 5 if size <= 64 else 3


def rsdml_batches(trainer: Any, batch: int):
    """Full labelled batches in the trainer's own epoch order (epoch after epoch)."""
    epoch = 0
    while True:
        for b in trainer.labeled_batches(epoch):
            if len(b) == batch:
                yield epoch, b
        epoch += 1


def part_a(args, device, trainer, split, size, steps, warmup) -> dict[str, Any]:
    """model step alone on random tensors already on the device"""
    B = args.batch
    gen = torch.Generator().manual_seed(args.seed)
    x = C.to_device(torch.randn(2 * B, 3, size, size, generator=gen), trainer)
    return C.time_steps(lambda i: C.model_step(trainer, x, B, read_loss=False),
                        warmup, steps, device, 2 * B, f"{size}px (a)")


def part_b(args, device, trainer, split, size, steps, warmup) -> dict[str, Any]:
    """rsdml's Trainer.run_step (train_step + loss read-back) from the warm cache"""
    batches = rsdml_batches(trainer, args.batch)

    def step(i: int) -> None:
        epoch, b = next(batches)
        trainer.run_step(b, epoch)  # as the training loop runs it (loss read-backs included)
        if i in (warmup - 1, warmup + steps - 1):  # the loop reads all losses by epoch end
            trainer.flush_losses()

    return C.time_steps(step, warmup, steps, device, 2 * args.batch, f"{size}px (b)")


def part_c(args, device, trainer, split, size, steps, warmup) -> dict[str, Any]:
    """per-sample PIL pipeline in DataLoader workers, then the same model step"""
    B = args.batch
    # On CUDA all workers deliver their first batch at once: warm up through that burst and
    # time enough steps to span several rounds of the workers.
    c_warm = warmup + (args.workers if device.type == "cuda" else 0)
    c_steps = max(steps, 2 * args.workers) if device.type == "cuda" else steps
    loader = C.reference_train_loader(args.data, split, size, B, c_warm + c_steps, args.workers,
                                      device, args.seed, full_batches=True)
    it = iter(loader)

    def step(i: int) -> None:
        xb, _yb = next(it)
        C.model_step(trainer, C.to_device(xb, trainer), B, read_loss=True)

    res = C.time_steps(step, c_warm, c_steps, device, 2 * B, f"{size}px (c)")
    res["dataloader_workers"] = args.workers
    return res


def bench_size(args: argparse.Namespace, device: torch.device, size: int, steps: int,
               warmup: int, split: Any, cache_dir: Path) -> dict[str, Any]:
    cfg = C.bench_config(args.data, size, device, cache_dir, args.batch, args.workers, args.seed,
                         amp=args.amp,
                             compile=args.compile, device_cache=args.device_cache)
    out: dict[str, Any] = {"size": size, "steps_timed": steps, "warmup_steps": warmup}

    with tempfile.TemporaryDirectory(prefix="rsdml-bench-run-") as run_root:
        session, trainer, out["cache"] = C.cached_session(cfg, split, Path(run_root))
        out["precision"] = C.precision(trainer)
        parts = {"a": ("a_model_step_in_memory", part_a),
                 "b": ("b_rsdml_step_from_cache", part_b), "c": ("c_per_sample_pil", part_c)}
        for letter in args.parts:
            key, fn = parts[letter]
            with C.part(out, key):
                C.log(f"{size}px ({letter}) {fn.__doc__.splitlines()[0]}")
                out[key] = fn(args, device, trainer, split, size, steps, warmup)
        del session, trainer

    a, b, c = (out.get(k) for k in ("a_model_step_in_memory", "b_rsdml_step_from_cache",
                                    "c_per_sample_pil"))
    target = 0.8 if device.type == "cuda" else 0.9
    out["ratio_b_over_a"] = C.ratio(b, a)
    out["ratio_b_over_c"] = C.ratio(b, c)
    out["target_b_over_a"] = target
    out["target_met"] = None if out["ratio_b_over_a"] is None else out["ratio_b_over_a"] >= target
    C.log(f"{size}px: b/a {out['ratio_b_over_a']}  b/c {out['ratio_b_over_c']}")
    return out


def main() -> None:
    args = parse()
    device = C.setup(args)
    sizes = args.sizes or ([64, 128, 256] if device.type == "cuda" else [64, 128])
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 1)
    result: dict[str, Any] = {"benchmark": "train", "machine": C.machine_info(device)}
    paths, labels, classes = C.scan(args.data)
    paths, labels = C.subset(paths, labels, args.images)
    split = C.aid_split(paths, labels, classes, args.seed)
    result["setup"] = {
        "data": str(Path(args.data).resolve()),
        "images": len(paths),
        "split": split.counts(),
        "labeled_batch": args.batch,
        "unlabeled_batch": args.batch,
        "model": "resnet18 (pretrained none) -> LayerNorm -> Linear(128) -> L2",
        "method": "hr-s2dml (margin softmax m=0.5 tau=0.05 + BNM), SGD lr 0.1 Nesterov",
        "amp_option": args.amp,
        "quick": args.quick,
        "timing": "mean = wall time of the timed steps / their number (device synced before "
                  "and after); images per step = labelled + unlabelled",
    }
    with C.cache_folder(args.cache_dir) as cache_dir:
        result["sizes"] = {}
        for i, size in enumerate(sizes):
            steps = steps_for(args, size, i, device)
            result["sizes"][str(size)] = bench_size(args, device, size, steps, warmup, split,
                                                    cache_dir)
    ok = [r["target_met"] for r in result["sizes"].values() if r["target_met"] is not None]
    result["all_targets_met"] = all(ok) if ok else None
    C.emit(C.finish(result, device))


if __name__ == "__main__":
    main()
