"""Where a batch's network input comes from: cached images (augmented on the device) or, in
fast mode, cached frozen-trunk features. The trainer and the embedder only see this interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rsdml.allocator import kept_memory
from rsdml.data.activation_views import strong_activation, symmetries
from rsdml.data.augment import TrainAugment, normalize
from rsdml.data.bands import gather
from rsdml.data.cache import ImageCache
from rsdml.models.embedding import EmbeddingNet
from rsdml.progress import progress


class ImageInputs:
    """uint8 images from the decoded cache -> device -> batched augmentation or normalisation.

    ``on_device``: the whole uint8 cache is copied once into device memory, so a batch is one
    ``index_select`` there: no host gather, pinning or host-to-device copy per step (on a GPU
    those cost more than the augmentation).
    """

    def __init__(self, cache: ImageCache, device: torch.device, augment: Any = None,
                 channels_last: bool = False, on_device: bool = False,
                 normalizer: Callable[[Tensor], Tensor] | None = None,
                 views: tuple[Any, Any] | None = None) -> None:
        self.cache = cache
        #: (weak, strong) ``ViewAugment`` for methods that compare two views of an unlabelled image
        self.view_augments = views
        self.device = device
        self.augment = augment  # TrainAugment, BandAugment (N bands) or None
        # None: ImageNet's (RGB); else the run's per-band normalisation (rsdml.data.bands)
        self.normalizer = normalizer or normalize
        self.channels_last = channels_last
        self.images = cache.images.to(device) if on_device else None

    @property
    def on_device(self) -> bool:
        return self.images is not None

    def _load(self, index: Tensor) -> Tensor:
        if self.images is not None:
            return gather(self.images, to_device(index, self.device))
        batch = self.cache.batch(index)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train(self, index: Tensor, generator: torch.Generator) -> Tensor:
        if self.augment is None:
            raise RuntimeError("ImageInputs built without augmentation")
        return self._layout(self.augment(self._load(index), generator))

    def views(self, index: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The weak and the strong view of the same images (one gather, two draws)."""
        if self.view_augments is None:
            raise RuntimeError("ImageInputs built without view augmentations")
        images = self._load(index)
        weak, strong = self.view_augments
        return self._layout(weak(images, generator)), self._layout(strong(images, generator))

    def eval(self, index: Tensor) -> Tensor:
        return self._layout(self.normalizer(self._load(index)))

    @staticmethod
    def embed(model: EmbeddingNet, x: Tensor) -> Tensor:
        return model(x)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A small host tensor (indices, labels) to ``device`` without blocking the host: through
    pinned memory on CUDA, so queued GPU work is not waited for."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def device_cache_fits(cache: ImageCache, device: torch.device, mode: str) -> bool:
    """``--device-cache auto``: hold the uint8 cache on a CUDA device when it takes at most a
    quarter of the free device memory (the rest is for the model, activations, augmentation)."""
    if mode == "off" or device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return cache.nbytes <= free // 4


class FeatureInputs:
    """Fast mode: trunk features computed once; only the head trains.

    ``features``: (N, F), one vector an image, or (N, V, F), cached views
    (``rsdml.training.views``): views 0 .. ``weak`` - 1 are the weak ones (0 is the image
    itself, the one evaluation uses), the rest strong. With views, the labelled images are
    augmented by a random weak view each step."""

    def __init__(self, features: Tensor, device: torch.device, weak: int = 1,
                 mapped: bool = False) -> None:
        # float16 views stay float16 (gathered rows become float32); a memory-mapped cache
        # (``mapped``) stays on the host.
        self.features = features if mapped else features.to(device)
        self.device = device
        self.weak = int(weak)

    @property
    def has_views(self) -> bool:
        return self.features.ndim == 3

    def _rows(self, index: Tensor, view: Tensor | int) -> Tensor:
        idx = index.to(self.features.device)
        if not self.has_views:
            out = self.features[idx]
        elif isinstance(view, int):
            out = self.features[idx, view]
        else:
            out = self.features[idx, view.to(self.features.device)]
        return out.to(self.device).float()

    def _draw(self, n: int, lo: int, hi: int, generator: torch.Generator) -> Tensor:
        return torch.randint(lo, hi, (n,), generator=generator, device=generator.device).cpu()

    def train(self, index: Tensor, generator: torch.Generator) -> Tensor:
        if self.has_views and self.weak > 1:
            return self._rows(index, self._draw(len(index), 0, self.weak, generator))
        return self._rows(index, 0)

    def views(self, index: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random weak and a random strong cached view of each image."""
        if not self.has_views:
            raise RuntimeError("fast mode without cached views: the runner builds them for view methods")
        v = self.features.shape[1]
        weak = self._draw(len(index), 0, self.weak, generator)
        strong = (self._draw(len(index), self.weak, v, generator) if v > self.weak
                  else self._draw(len(index), 0, v, generator))
        return self._rows(index, weak), self._rows(index, strong)

    def eval(self, index: Tensor) -> Tensor:
        return self._rows(index, 0)

    @staticmethod
    def embed(model: EmbeddingNet, x: Tensor) -> Tensor:
        return model.embed_features(x)


class ActivationInputs:
    """Partial fine-tuning (``--train-stages N``): activations at the input of the trunk's last
    N stages, computed once; each step runs those stages (which train) and the head. Views are
    made at the cut: a random symmetry of the square (weak; the labelled images get one too)
    and ``strong_activation`` (strong)."""

    def __init__(self, activations: Tensor, cut: Any, device: torch.device,
                 mapped: bool = False) -> None:
        self.activations = activations if mapped else activations.to(device)
        self.cut = cut  # rsdml.models.stages.TrunkCut of the run's model
        self.device = device

    def _rows(self, index: Tensor) -> Tensor:
        a = self.activations[index.to(self.activations.device)].to(self.device).float()
        return a.contiguous(memory_format=torch.channels_last) if uses_channels_last(self.device) else a

    def _weak(self, a: Tensor, generator: torch.Generator) -> Tensor:
        which = torch.randint(0, 8, (len(a),), generator=generator, device=generator.device)
        return symmetries(a, which.to(a.device))

    def train(self, index: Tensor, generator: torch.Generator) -> Tensor:
        return self._weak(self._rows(index), generator)

    def views(self, index: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        a = self._rows(index)
        return self._weak(a, generator), strong_activation(a, generator)

    def eval(self, index: Tensor) -> Tensor:
        return self._rows(index)

    def embed(self, model: EmbeddingNet, x: Tensor) -> Tensor:
        return model.embed_features(self.cut.top(x))


Inputs = ImageInputs | FeatureInputs | ActivationInputs


def place_model(model: EmbeddingNet, device: torch.device) -> EmbeddingNet:
    """The model in the memory layout its inputs will have (see ``uses_channels_last``)."""
    return model.to(memory_format=torch.channels_last) if uses_channels_last(device) else model


def image_inputs(cache: ImageCache, device: torch.device, device_cache: str,
                 augment: TrainAugment | Any | None = None,
                 normalizer: Callable[[Tensor], Tensor] | None = None,
                 views: tuple[Any, Any] | None = None) -> ImageInputs:
    """ImageInputs as training, evaluation and ``rsdml embed`` build them: in the layout of
    ``place_model``, the images in device memory where ``--device-cache`` lets them fit."""
    return ImageInputs(cache, device, augment, channels_last=uses_channels_last(device),
                       on_device=device_cache_fits(cache, device, device_cache),
                       normalizer=normalizer, views=views)


def uses_channels_last(device: torch.device) -> bool:
    """channels_last on CUDA and CPU: cuDNN's and oneDNN's convolutions run fastest in NHWC
    (on a 2-core CPU in float32: ResNet-18 training 1.1-1.3x, EfficientNet-Lite0 1.8-2.1x;
    ``benchmarks/bench_layout.py``)."""
    return device.type in ("cuda", "cpu")


@torch.inference_mode()
def embed_batches(forward: Callable[[Tensor], Tensor], inputs: ImageInputs | FeatureInputs,
                  index: Tensor, batch_size: int, autocast: torch.dtype | None,
                  show_progress: bool, dim: int) -> np.ndarray:
    """Evaluation-mode embeddings of ``index`` in batches: the one loop behind evaluation,
    ``rsdml evaluate`` and ``rsdml embed``."""
    out, pending = [], []
    chunks = index.split(batch_size)
    with kept_memory():
        for chunk in progress(chunks, total=len(chunks), desc="embedding", enabled=show_progress):
            with (torch.autocast(inputs.device.type, dtype=autocast) if autocast
                  else contextlib.nullcontext()):
                pending.append(forward(inputs.eval(chunk)).float())
            # Copy back in groups: a copy per batch would make the host wait for every batch.
            if len(pending) == _EMBED_COPY_EVERY:
                out.append(torch.cat(pending).cpu())
                pending = []
    if pending:
        out.append(torch.cat(pending).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)


_EMBED_COPY_EVERY = 32
