"""The embedding network of HR-S2DML: trunk -> LayerNorm (no affine) -> Linear -> L2 norm."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsdml.models.registry import adapt_input_channels, create_backbone

if TYPE_CHECKING:
    from rsdml.config import TrainConfig
    from rsdml.data.bands import InputSpec


class EmbeddingNet(nn.Module):
    """Trunk plus projection head; outputs unit-norm embeddings of size ``embedding_dim``.

    The head is split from the trunk (``forward_features`` / ``embed_features``) so a frozen
    trunk's features can be computed once and cached while only the head trains.

    Head (``mlp_head=False``, the paper's): ``LayerNorm(F, elementwise_affine=False) ->
    Linear(F, D)``. The affine-free LayerNorm standardises the pooled features without adding
    parameters that would compete with the Linear layer.
    ``mlp_head=True``: ``LayerNorm(F, no affine) -> Linear(F, F) -> ReLU -> Linear(F, D)``.
    """

    def __init__(self, trunk: nn.Module, embedding_dim: int = 128, mlp_head: bool = False):
        super().__init__()
        num_features = int(trunk.num_features)  # type: ignore[arg-type]
        self.trunk = trunk
        self.num_features = num_features
        self.embedding_dim = int(embedding_dim)
        layers: list[nn.Module] = [nn.LayerNorm(num_features, elementwise_affine=False)]
        if mlp_head:
            layers += [nn.Linear(num_features, num_features), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(num_features, self.embedding_dim))
        self.head = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(B, F)`` of ImageNet-normalised images ``(B, 3, H, W)``."""
        return self.trunk(x)

    def embed_features(self, f: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 embeddings ``(B, D)`` of trunk features ``(B, F)``.

        The head runs in float32 even under bf16 autocast: it costs nothing next to the trunk,
        and bf16's 8-bit mantissa would quantise cosine similarities (and rankings) to ~0.5 %.
        """
        with torch.autocast(device_type=f.device.type, enabled=False):
            return F.normalize(self.head(f.float()), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.forward_features(x))


def build_model(cfg: TrainConfig, spec: InputSpec | None = None) -> EmbeddingNet:
    """The network a config describes (backbone, initial weights, head); ``spec``: the run's
    N-band input (``RUN/bands.json``), for which the first convolution is adapted."""
    trunk = create_backbone(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights)
    if spec is not None and (spec.channels != 3 or spec.rgb != (0, 1, 2)):
        adapt_input_channels(trunk, spec.channels, spec.rgb, pretrained=cfg.trunk_pretrained)
    return EmbeddingNet(trunk, embedding_dim=cfg.embedding_dim, mlp_head=cfg.mlp_head)
