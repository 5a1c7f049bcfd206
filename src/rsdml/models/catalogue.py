"""The backbone names, without torch: ``rsdml list`` and help texts read them here (``import
torch`` costs seconds); :mod:`rsdml.models.registry` holds the factories and checks at import
that its names and these agree, so adding a backbone is still one factory and one line in each.
"""

from __future__ import annotations

#: Backbone names in ``rsdml list`` order (``registry.BACKBONES`` must hold exactly these).
BACKBONE_NAMES: tuple[str, ...] = ("resnet18", "efficientnet_lite0")
