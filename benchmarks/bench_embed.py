"""Embedding-extraction throughput: rsdml embed's path vs the model alone.

Prints one JSON object. Per resolution (CPU: 64 and 128 px; CUDA: 128 and 256 px), images
per second of:

  embed_path:   ``embed_batches``, the loop ``rsdml embed`` and the evaluation run
                (training/inputs.py): rows of the warm decoded-image cache (held in GPU memory
                where ``--device-cache auto`` puts them, else pinned -> device) -> ``normalize``
                -> model under ``torch.inference_mode`` -> float32 on the host; large batches;
  model_alone:  the same loop and model on a normalised tensor already on the device;
  end_to_end:   ``embed_folder()`` itself (the CLI's function) on the same images with the
                cache warm: listing + checking the files, cache key and CRC-checked load,
                checkpoint load, the loop above, writing the .npz.

Target: embed_path >= 0.9 x model_alone. Both run as embed.py builds the model: autocast
dtype from ``--amp`` (bf16 on CUDA, float32 on a CPU unless ``--amp bf16``) and channels_last;
the JSON's ``precision`` says which.

    python benchmarks/bench_embed.py [--device cpu|cuda] [--sizes 64 128] [--images N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(ap)
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="resolutions (default: CPU 64 128, CUDA 128 256)")
    ap.add_argument("--batch", type=int, default=None,
                    help="embedding batch (default: CPU 256 = rsdml's --eval-batch-size, "
                         "CUDA 1024)")
    ap.add_argument("--images", type=int, default=None,
                    help="images to embed per measurement (default: CPU 1024, CUDA all)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed passes over the images per measurement (default 1)")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end embed_folder() run")
    args = ap.parse_args()
    if args.quick:
        args.sizes = args.sizes or [32]
        args.batch, args.images = args.batch or 32, args.images or 96
        args.workers = args.workers or 2
    return args


@contextlib.contextmanager
def image_folder(data: Path, paths: list[str]):
    """The data folder itself, or a temporary folder of links to ``paths`` (a subset that
    ``rsdml embed`` can be pointed at without copying any image)."""
    all_paths, _, _ = C.scan(data)
    if len(paths) == len(all_paths):
        yield data
        return
    with tempfile.TemporaryDirectory(prefix="rsdml-bench-images-") as tmp:
        for rel in paths:
            link = Path(tmp) / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((data / rel).resolve())
        yield Path(tmp)


def timed_passes(fn, n_images: int, repeats: int, device: torch.device,
                 label: str) -> dict[str, Any]:
    fn(warmup=True)  # one batch: lazy initialisation, allocator, cudnn autotuning
    C.sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        fn(warmup=False)
    C.sync(device)
    dt = time.perf_counter() - t
    C.log(f"{label}: {n_images * repeats / dt:.1f} images/s")
    return {"images_per_s": C.rnd(n_images * repeats / dt, 2), "seconds": C.rnd(dt, 3),
            "images": n_images, "passes": repeats}


def bench_size(args, device, size, data: Path, paths: list[str], cache_dir: Path) -> dict[str, Any]:
    from rsdml.models.embedding import build_model
    from rsdml.training.inputs import embed_batches, image_inputs, place_model
    from rsdml.training.trainer import autocast_dtype

    cfg = C.bench_config(data, size, device, cache_dir, 128, args.workers, args.seed,
                         eval_batch_size=args.batch, amp=args.amp,
                         device_cache=args.device_cache)
    out: dict[str, Any] = {"size": size, "batch": args.batch}
    C.log(f"{size}px: cache of {len(paths)} images (cold build, then warm load)")
    cache, out["cache"] = C.build_and_reload_cache(data, paths, size, cache_dir, args.workers)
    # As embed.py builds it: precision, memory layout, device-resident images.
    dtype = autocast_dtype(cfg.amp, device)
    model = place_model(build_model(cfg).to(device), device).eval()
    inputs = image_inputs(cache, device, cfg.device_cache)
    out["precision"] = {"autocast_dtype": str(dtype) if dtype else None,
                        "channels_last": inputs.channels_last, "images_on_device": inputs.on_device}
    n = len(paths)
    index = torch.arange(n)

    class InMemory:
        """The model alone: the same loop, the input a normalised tensor already on the device."""
        device = inputs.device
        x = torch.randn(args.batch, 3, size, size).to(device)
        if inputs.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def eval(self, chunk: torch.Tensor) -> torch.Tensor:
            return self.x[: len(chunk)]

    def loop(source: Any):
        def run(warmup: bool) -> None:
            embed_batches(model, source, index[: args.batch] if warmup else index, args.batch,
                          dtype, False, cfg.embedding_dim)
        return run

    out["embed_path"] = timed_passes(loop(inputs), n, args.repeats, device, f"{size}px embed path")
    out["model_alone"] = timed_passes(loop(InMemory()), n, args.repeats, device,
                                      f"{size}px model alone")
    out["ratio_embed_over_model"] = C.ratio(out["embed_path"], out["model_alone"])
    out["target_ratio"] = 0.9
    out["target_met"] = out["ratio_embed_over_model"] >= 0.9
    if not args.no_e2e:
        out["end_to_end"] = end_to_end(args, device, cfg, model, data, n)
    del cache, inputs
    return out


def end_to_end(args, device, cfg, model, data: Path, n: int) -> dict[str, Any]:
    """``embed_folder`` as the CLI calls it, on a run folder holding this model."""
    from rsdml.training.checkpoint import save_checkpoint
    from rsdml.training.embed import embed_folder
    from rsdml.training.run_folder import RunFolder

    with tempfile.TemporaryDirectory(prefix="rsdml-bench-embed-") as tmp:
        run = RunFolder(Path(tmp) / "run")
        run.root.mkdir()
        cfg.save_yaml(run.config)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_checkpoint({"model": state, "epoch": 0}, run.last)
        out_file = Path(tmp) / "emb.npz"
        C.log(f"{cfg.image_size}px end-to-end embed_folder on {n} images")
        before = set(Path(cfg.cache_dir).glob("*.rsdml-images"))
        t = time.perf_counter()
        count = embed_folder(data, run.root, out_file, device=device.type,
                             batch_size=args.batch, quiet=True)
        dt = time.perf_counter() - t
        reused = set(Path(cfg.cache_dir).glob("*.rsdml-images")) == before
    C.log(f"{cfg.image_size}px end-to-end: {count / dt:.1f} images/s (warm cache reused: {reused})")
    return {"images_per_s": C.rnd(count / dt, 2), "seconds": C.rnd(dt, 3), "images": count,
            "warm_cache_reused": reused,
            "note": "one call, cache warm; includes listing/checking files, cache load, model "
                    "build + checkpoint load and the .npz write"}


def main() -> None:
    args = parse()
    device = C.setup(args)
    sizes = args.sizes or ([128, 256] if device.type == "cuda" else [64, 128])
    if args.batch is None:
        args.batch = 1024 if device.type == "cuda" else 256
    if args.images is None and device.type == "cpu":
        args.images = 1024
    data = Path(args.data)
    paths, labels, _ = C.scan(data)
    paths, _ = C.subset(paths, labels, args.images)
    result: dict[str, Any] = {"benchmark": "embed", "machine": C.machine_info(device)}
    result["setup"] = {
        "data": str(data.resolve()), "images": len(paths), "batch": args.batch,
        "model": "resnet18 (pretrained none) -> LayerNorm -> Linear(128) -> L2, eval mode",
        "timing": "one untimed batch, then the wall time of --repeats full passes over the images",
        "quick": args.quick,
    }
    from rsdml.training.embed import list_images

    with C.cache_folder(args.cache_dir) as cache_dir, image_folder(data, paths) as folder:
        listed, _bad = list_images(folder)  # rsdml embed's own file list and order
        result["sizes"] = {str(s): bench_size(args, device, s, folder, listed, cache_dir)
                           for s in sizes}
    ok = [r["target_met"] for r in result["sizes"].values()]
    result["all_targets_met"] = all(ok) if ok else None
    C.emit(C.finish(result, device))


if __name__ == "__main__":
    main()
