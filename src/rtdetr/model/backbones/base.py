"""What the backbone factory knows of each backbone name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone name's builder and defaults.

    ``build(return_idx=..., freeze_at=..., freeze_norm=...)`` returns an nn.Module that maps images
    [B, 3, H, W] to a list of feature maps, one per entry of ``return_idx`` (stage indices 0..3 ->
    strides 4, 8, 16, 32), and has ``out_channels`` and ``out_strides`` for those levels; it raises
    ValueError for a ``return_idx`` it cannot give. ``freeze_at`` >= 0 freezes the stem and the first
    ``freeze_at`` stages (-1: nothing); ``freeze_norm`` freezes its BatchNorm layers (backbones
    without BatchNorm ignore it). The module may define ``adapt_state_dict(state) -> state``, which
    maps published weight files (other projects' key names) to its own names before loading.
    """

    build: Callable[..., nn.Module]
    freeze_at: int = -1
    freeze_norm: bool = False
