"""Frozen ImageNet EfficientNet-Lite0 features must beat random ResNet-18 features on real
remote-sensing scenes (checks that the shipped weights load and the input conversion is right).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rsdml.models.registry import create_backbone

AID = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "AID"
N_CLASSES, PER_CLASS, SIZE = 10, 30, 96

pytestmark = pytest.mark.aid


def _subset() -> tuple[torch.Tensor, torch.Tensor]:
    if not AID.is_dir():
        pytest.skip(f"real data set not found at {AID}")
    classes = sorted(p.name for p in AID.iterdir() if p.is_dir())[:N_CLASSES]
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(
            f for f in (AID / name).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")
        )[:PER_CLASS]
        for f in files:
            with Image.open(f) as im:
                rgb = im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
            images.append(np.asarray(rgb, dtype=np.float32) / 255.0)
            labels.append(label)
    if len(classes) < N_CLASSES or len(set(labels)) < N_CLASSES:
        pytest.skip(f"{AID} has fewer than {N_CLASSES} non-empty class folders")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(labels)


def _loo_1nn_accuracy(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out 1-NN accuracy under cosine similarity."""
    f = F.normalize(features, dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(-2.0)
    return (labels[sim.argmax(1)] == labels).float().mean().item()


def _features(trunk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    trunk.eval()
    with torch.no_grad():
        return torch.cat([trunk(b) for b in x.split(100)])


def test_imagenet_efficientnet_features_beat_random_resnet_features():
    x, y = _subset()
    torch.manual_seed(0)
    acc_pre = _loo_1nn_accuracy(_features(create_backbone("efficientnet_lite0", "imagenet"), x), y)
    acc_rand = _loo_1nn_accuracy(_features(create_backbone("resnet18", "none"), x), y)
    # Measured here: 0.83 vs 0.54 (chance 0.10).
    assert acc_pre > 0.65, acc_pre
    assert acc_pre > acc_rand + 0.15, (acc_pre, acc_rand)
