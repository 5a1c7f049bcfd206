"""Memory layout and precision of the model alone: why rsdml uses channels_last everywhere and
bf16 autocast where the hardware runs it natively.

Prints one JSON object: images/s of a training step (forward, a stand-in loss, backward, SGD)
and of an inference pass, for each backbone at each resolution, in float32 NCHW (a plain
PyTorch script), float32 channels_last, bf16 autocast + channels_last and torch.compile
(inductor) + channels_last, with the speed-ups over float32 NCHW.

    python benchmarks/bench_layout.py [--device cpu|cuda] [--sizes 64 128] [--threads T]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

VARIANTS = {  # name: (channels_last, autocast dtype, torch.compile)
    "fp32_nchw": (False, None, False),
    "fp32_channels_last": (True, None, False),
    "bf16_channels_last": (True, torch.bfloat16, False),
    "compile_fp32_channels_last": (True, None, True),
}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "efficientnet_lite0"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.batch, args.steps = [32], 8, 1
    return args


def measure(model: torch.nn.Module, x: torch.Tensor, train: bool, cl: bool,
            dtype: torch.dtype | None, steps: int, device: torch.device,
            compiled: bool = False) -> float:
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = model.to(memory_format=fmt)
    run = torch.compile(model) if compiled else model
    x = x.contiguous(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(
            device.type, enabled=False)
        if train:
            model.train()
            with ctx:
                loss = run(x).float().square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            model.eval()
            with torch.inference_mode(), ctx:
                run(x).float()

    step()  # warm-up: oneDNN / cuDNN primitive creation (and, compiled, the compilation)
    C.sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    C.sync(device)
    return x.shape[0] * steps / (time.perf_counter() - t)


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    from rsdml.models.registry import create_backbone
    from rsdml.training.trainer import cpu_has_native_bf16

    result: dict[str, Any] = {"benchmark": "layout", "machine": C.machine_info(device),
                              "cpu_native_bf16": cpu_has_native_bf16(),
                              "setup": {"batch": args.batch, "steps": args.steps,
                                        "loss": "mean square of the trunk's features"}}
    out: dict[str, Any] = {}
    for name in args.backbones:
        torch.manual_seed(0)
        model = create_backbone(name, pretrained="none").to(device)
        for size in args.sizes:
            x = torch.randn(args.batch, 3, size, size, device=device)
            for mode in ("train", "inference"):
                row = {}
                for variant, (cl, dtype, compiled) in VARIANTS.items():
                    if compiled and args.no_compile:
                        continue
                    row[variant] = C.rnd(measure(model, x, mode == "train", cl, dtype,
                                                 args.steps, device, compiled), 1)
                    C.log(f"{name} {size}px {mode} {variant}: {row[variant]} images/s")
                base = row["fp32_nchw"]
                row["speedup_fp32_channels_last"] = C.rnd(row["fp32_channels_last"] / base, 2)
                row["speedup_bf16_channels_last"] = C.rnd(row["bf16_channels_last"] / base, 2)
                if "compile_fp32_channels_last" in row:
                    row["speedup_compile_fp32_channels_last"] = C.rnd(
                        row["compile_fp32_channels_last"] / base, 2)
                out[f"{name}/{size}/{mode}"] = row
    result["images_per_s"] = out
    C.emit(C.finish(result, device))


if __name__ == "__main__":
    main()
