"""Backbone registry: a backbone is a name plus a factory ``factory(pretrained) -> trunk``.

A trunk maps ImageNet-normalised images ``(B, 3, H, W)`` to globally pooled features
``(B, num_features)`` and has an int attribute ``num_features``. For N-band input,
:func:`adapt_input_channels` changes its first convolution (and, where a trunk declares
``adapt_input``, its own per-channel input buffers). Adding a backbone is one
module with a factory plus one line in :data:`BACKBONES` (the tests pick it up by themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from rsdml.config import PRETRAINED as PRETRAINED_CHOICES
from rsdml.errors import RsdmlError
from rsdml.models.catalogue import BACKBONE_NAMES
from rsdml.models.efficientnet_lite import efficientnet_lite0
from rsdml.models.resnet import resnet18

BackboneFactory = Callable[[bool], nn.Module]

BACKBONES: dict[str, BackboneFactory] = {
    "resnet18": resnet18,
    "efficientnet_lite0": efficientnet_lite0,
}
if tuple(BACKBONES) != BACKBONE_NAMES:  # a programming error: the torch-free list disagrees
    raise RuntimeError(f"models.catalogue.BACKBONE_NAMES {BACKBONE_NAMES} differs from the "
                       f"registry's {tuple(BACKBONES)}; add the backbone to both")

# Classifier layers of the source networks: present in their files, absent from a trunk.
_CLASSIFIER_PREFIXES = ("fc.", "_fc.", "classifier.")
# Wrappers that prefix every key: DataParallel/DDP, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def describe(name: str) -> str:
    """One line about a backbone (its factory's docstring), for ``rsdml list``."""
    doc = (BACKBONES[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def check_backbone(name: str) -> None:
    """A one-line error unless ``name`` is a registered backbone."""
    if name not in BACKBONES:
        raise RsdmlError(
            f"--backbone {name!r} is unknown; choose one of {', '.join(sorted(BACKBONES))}"
        )


def create_backbone(
    name: str, pretrained: str = "imagenet", weights: str | None = None
) -> nn.Module:
    """Build trunk ``name``; ``weights`` (a local state dict file) overrides ``pretrained``."""
    check_backbone(name)
    if pretrained not in PRETRAINED_CHOICES:
        raise RsdmlError(
            f"--pretrained {pretrained!r} is not one of {', '.join(PRETRAINED_CHOICES)}"
        )
    factory = BACKBONES[name]
    if weights is not None:
        trunk = factory(False)
        load_trunk_weights(trunk, weights, name)
        return trunk
    return factory(pretrained == "imagenet")


def adapt_conv_weight(weight: torch.Tensor, in_chans: int,
                      rgb: tuple[int, int, int] | None) -> torch.Tensor:
    """A pretrained RGB first-convolution weight ``(O, 3, kh, kw)`` for ``in_chans`` bands.

    As timm's ``adapt_input_conv``, but band-aware: the channels at positions ``rgb`` get the
    red, green and blue filters, every other channel the mean of the three, and the whole is
    scaled by 3 / in_chans so that the first layer's activations keep their magnitude. With
    3 channels in RGB order the weight is returned unchanged.
    """
    mean = weight.mean(dim=1, keepdim=True)
    new = mean.repeat(1, in_chans, 1, 1)
    if rgb is not None:
        for k, pos in enumerate(rgb):
            new[:, pos] = weight[:, k]
    return new * (3.0 / in_chans)


def first_conv(trunk: nn.Module) -> nn.Conv2d:
    """The trunk's first convolution (the one that sees the image's channels)."""
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise TypeError(f"{type(trunk).__name__} has no Conv2d layer")


def adapt_input_channels(trunk: nn.Module, in_chans: int, rgb: tuple[int, int, int] | None,
                         pretrained: bool) -> None:
    """Give ``trunk`` ``in_chans`` input channels: from its (pretrained) RGB filters by
    :func:`adapt_conv_weight`, or freshly initialised (He, fan-out, as torchvision's ResNet)
    for a trunk trained from scratch. A trunk with an ``adapt_input(in_chans, rgb)`` method
    adapts its own per-channel input buffers there."""
    conv = first_conv(trunk)
    if conv.in_channels != 3:
        raise ValueError(f"the first convolution has {conv.in_channels} input channels, not 3")
    if pretrained:
        weight = adapt_conv_weight(conv.weight.detach(), in_chans, rgb)
    else:
        weight = torch.empty(conv.out_channels, in_chans // conv.groups, *conv.kernel_size)
        nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
    conv.weight = nn.Parameter(weight.contiguous())
    conv.in_channels = in_chans
    adapt = getattr(trunk, "adapt_input", None)
    if callable(adapt):
        adapt(in_chans, rgb)


def load_trunk_weights(trunk: nn.Module, path: str | Path, name: str = "backbone") -> None:
    """Load a local state dict into ``trunk``; every trunk tensor must be present and fit.

    Accepted files: a plain state dict of the source network (torchvision / efficientnet
    package), optionally wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``, keys
    optionally prefixed ``module.`` or ``_orig_mod.``; an rsdml ``EmbeddingNet`` state dict
    (keys ``trunk.*``; the head is ignored). Classifier keys (``fc.*``, ``_fc.*``) are ignored.
    """
    p = Path(path)
    if not p.is_file():
        raise RsdmlError(f"--weights {p}: file not found; give the path of a local state dict")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - garbage input fails in many ways inside unpickling
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise RsdmlError(
            f"--weights {p}: not a readable PyTorch state dict ({first}); "
            "save one with torch.save(model.state_dict(), PATH)"
        ) from None
    state = _unwrap(obj, p)
    own = trunk.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} of wrong shape (e.g. {'; '.join(wrong_shape[:2])})")
        raise RsdmlError(
            f"--weights {p} does not match backbone {name}: keys {'; '.join(parts)}; "
            f"give a state dict of {name} or pick the matching --backbone"
        )
    trunk.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _unwrap(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise RsdmlError(
            f"--weights {p} holds no state dict (a mapping of parameter names to tensors); "
            "save one with torch.save(model.state_dict(), PATH)"
        )
    state = dict(obj)
    stripped = True
    while stripped:  # wrappers nest, e.g. "module._orig_mod."
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    if any(k.startswith("trunk.") for k in state):
        state = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    return {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
