"""A memory check before the first training step, so that a run too large for the machine stops
with a one-line error naming settings that fit, rather than being killed (or swapping) minutes
in.

The estimate is measured, not tabulated: one forward pass of the run's own model on two blank
images at the run's image size, counting the bytes autograd keeps for the backward pass (the
activations, which dominate), scaled linearly to the images of one step; plus gradients and
optimiser state. It takes well under a second on a CPU at 64 px and changes no state (the model
runs in eval mode on zeros; no random number is drawn).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rsdml import allocator
from rsdml.config import TrainConfig
from rsdml.errors import RsdmlError

#: Set to 1 to skip the check (e.g. when the machine swaps by design).
SKIP_ENV = "RSDML_SKIP_MEMORY_CHECK"
#: Activations at the backward pass's peak relative to those saved by the forward pass
#: (gradients of the activations exist while saved ones are freed, plus workspaces).
PEAK_FACTOR = 1.5
#: On a CPU whose training steps keep freed memory (rsdml.allocator): the heap holds about a
#: fifth more than the passes use at once (peak RSS 1.19-1.24x, benchmarks/bench_allocator.py).
KEPT_FACTOR = 1.25
#: Use at most this share of the available memory (the rest: allocator slack, other processes).
USABLE = 0.9
_PROBE_IMAGES = 2
_GB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """What one training step needs beyond what is already allocated, and what is available."""

    per_image: int  # activation bytes per image at the peak
    fixed: int  # gradients and optimiser state
    images: int  # images per step (labelled + unlabelled)
    available: int

    @property
    def need(self) -> int:
        return self.fixed + self.per_image * self.images

    @property
    def fits(self) -> bool:
        return self.need <= USABLE * self.available


def step_images(cfg: TrainConfig, uses_unlabeled: bool, weak_graph: bool = False) -> int:
    """Images one step runs with a graph: the labelled batch, the unlabelled batch (the strong
    view of the consistency methods) and, where a loss reads the weak view too (``--hr-view
    weak``), the weak view again. :meth:`Method.graph_images` asks this for its method."""
    u = cfg.unlabeled_batch_size if uses_unlabeled else 0
    return cfg.batch_size + u + (u if weak_graph else 0)


def activation_bytes(model: nn.Module, image_size: int, device: torch.device,
                     autocast_dtype: torch.dtype | None, channels_last: bool,
                     n: int = _PROBE_IMAGES) -> int:
    """Bytes autograd saves for the backward pass in one forward of ``n`` images (parameters
    excluded, shared storages counted once). The model is put back in its modes afterwards."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    from rsdml.models.registry import first_conv

    channels = first_conv(model).in_channels  # 3, or the bands of a multispectral run
    x = torch.zeros(n, channels, image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cast = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
            if autocast_dtype is not None else contextlib.nullcontext())
    try:
        model.eval()  # no BatchNorm statistics updated
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
            out = model(x)
        del out
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for p, flag in grads.items():
            p.requires_grad_(flag)
    return sum(storages.values())


def available_memory(device: torch.device) -> int:
    """Bytes free for this run: the free device memory on CUDA; on a CPU the kernel's
    MemAvailable (psutil's figure where installed), capped by a cgroup (container) limit."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil  # optional

        avail = int(psutil.virtual_memory().available)
    except ImportError:
        avail = _meminfo_available()
    return min(avail, _cgroup_headroom())


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 2**62  # unknown: do not refuse


def _cgroup_headroom() -> int:
    """limit - usage of a cgroup v2 memory limit, if one is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        usage = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            return max(0, int(limit) - int(usage))
    except (OSError, ValueError):
        pass
    return 2**62


def estimate(cfg: TrainConfig, model: nn.Module, device: torch.device,
             autocast_dtype: torch.dtype | None, channels_last: bool,
             images: int, trainable_bytes: int) -> MemoryEstimate:
    """The measured estimate for ``cfg``'s image size and batch on ``device``."""
    n = _PROBE_IMAGES
    kept = KEPT_FACTOR if allocator.enabled() and device.type == "cpu" else 1.0
    per_image = math.ceil(PEAK_FACTOR * kept * activation_bytes(
        model, cfg.image_size, device, autocast_dtype, channels_last, n) / n)
    # Gradients (1x) and optimiser state (AdamW 2x, SGD momentum 1x) of the trainable weights.
    states = 2 if cfg.optimizer == "adamw" else 1
    return MemoryEstimate(per_image, (1 + states) * trainable_bytes,
                          images, available_memory(device))


def check_memory(cfg: TrainConfig, model: nn.Module, device: torch.device,
                 autocast_dtype: torch.dtype | None, channels_last: bool,
                 images: int) -> MemoryEstimate | None:
    """RsdmlError (exit 2, one line, naming an --image-size and a --batch-size that fit) when
    one training step would not fit in this device's memory; None when skipped (fast mode
    trains no trunk; ``RSDML_SKIP_MEMORY_CHECK=1``). ``images``: the images one step runs
    with a graph (the method says: ``Method.graph_images``)."""
    if cfg.freeze_backbone or os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        return None
    trainable = sum(p.numel() * p.element_size() for p in model.parameters())
    est = estimate(cfg, model, device, autocast_dtype, channels_last, images, trainable)
    if not est.fits:
        raise RsdmlError(_message(cfg, est, device))
    return est


def _message(cfg: TrainConfig, est: MemoryEstimate, device: torch.device) -> str:
    budget = USABLE * est.available - est.fixed
    where = "free on the GPU" if device.type == "cuda" else "available"
    head = (f"one training step needs about {_size(est.need)} at --image-size {cfg.image_size} "
            f"with {est.images} images per step, but {_size(est.available)} is {where}")
    ratio = budget / (est.per_image * est.images) if budget > 0 else 0.0
    fixes = []
    size = int(cfg.image_size * math.sqrt(ratio)) // 32 * 32  # activations grow with the area
    if size >= 32:
        fixes.append(f"--image-size {size}")
    scale = min(1.0, ratio)
    batch = int(cfg.batch_size * scale)
    if batch >= 2:
        fixes.append(f"--batch-size {batch}")
        if est.images > cfg.batch_size:  # the method takes unlabelled batches too
            fixes[-1] += f" --unlabeled-batch-size {max(2, int(cfg.unlabeled_batch_size * scale))}"
    fixes.append("--freeze-backbone")
    return (f"{head}; use {' or '.join(fixes)} (set {SKIP_ENV}=1 to train anyway)")


def _size(n: float) -> str:
    return f"{n / _GB:.1f} GB" if n >= _GB else f"{n / 2**20:.0f} MB"
