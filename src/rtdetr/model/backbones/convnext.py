"""ConvNeXt (v1, with TAO's 3x3 projections) and ConvNeXt-V2 backbones on timm's networks."""

from __future__ import annotations

from rtdetr.model.backbones.base import BackboneSpec

BACKBONES: dict[str, BackboneSpec] = {}
