"""FAN (Fully Attentional Networks) hybrid backbones, as TAO builds them for RT-DETR."""

from __future__ import annotations

from rtdetr.model.backbones.base import BackboneSpec

BACKBONES: dict[str, BackboneSpec] = {}
