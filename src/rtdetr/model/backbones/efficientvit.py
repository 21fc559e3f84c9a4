"""EfficientViT (MIT) backbones on timm's networks, each level through a LayerNorm."""

from __future__ import annotations

from rtdetr.model.backbones.base import BackboneSpec

BACKBONES: dict[str, BackboneSpec] = {}
