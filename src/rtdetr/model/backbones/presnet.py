"""PResNet-vd: the ResNet of the original RT-DETR (3x3 deep stem, avg-pool shortcut downsampling).

Parameter names follow the original code (`conv1.conv1_1.conv`, `res_layers.0.blocks.0.branch2a.norm`,
`short.conv.conv`, ...), so its checkpoints load unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from rtdetr.model.backbones.base import BackboneSpec
from rtdetr.model.layers import (
    ConvNormLayer,
    act_,
    add_,
    freeze_batch_norm,
    get_activation,
    max_pool_3x3_s2,
)

DEPTHS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
STAGE_WIDTHS = [64, 128, 256, 512]
STAGE_STRIDES = [4, 8, 16, 32]


def _shortcut(ch_in: int, ch_out: int, stride: int) -> nn.Module:
    """vd projection shortcut: avg-pool then 1x1 conv when striding, else a plain 1x1 conv."""
    if stride == 2:
        return nn.Sequential(
            OrderedDict(
                [
                    ("pool", nn.AvgPool2d(2, 2, 0, ceil_mode=True)),
                    ("conv", ConvNormLayer(ch_in, ch_out, 1, 1)),
                ]
            )
        )
    return ConvNormLayer(ch_in, ch_out, 1, stride)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act: str = "relu"):
        super().__init__()
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(ch_in, ch_out, stride)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 3, stride, act=act)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, 1)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch2b(self.branch2a(x))
        return act_(self.act, add_(out, x if self.shortcut else self.short(x)))


class BottleNeck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 x4."""

    expansion = 4

    def __init__(self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act: str = "relu"):
        super().__init__()
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(ch_in, ch_out * self.expansion, stride)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 1, 1, act=act)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, stride, act=act)
        self.branch2c = ConvNormLayer(ch_out, ch_out * self.expansion, 1, 1)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch2c(self.branch2b(self.branch2a(x)))
        return act_(self.act, add_(out, x if self.shortcut else self.short(x)))


class Blocks(nn.Module):
    def __init__(self, block: type, ch_in: int, ch_out: int, count: int, stage_idx: int, act: str):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(count):
            stride = 2 if i == 0 and stage_idx > 0 else 1
            self.blocks.append(block(ch_in, ch_out, stride, shortcut=i > 0, act=act))
            ch_in = ch_out * block.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class PResNet(nn.Module):
    """ResNet-vd returning the feature maps of the stages in `return_idx` (0..3 -> strides 4..32).

    forward: images [B, 3, H, W] -> list of [B, out_channels[i], H / out_strides[i], W / out_strides[i]].
    `freeze_at` >= 0 freezes the stem and the first `freeze_at` stages; `freeze_norm` makes every
    BatchNorm a FrozenBatchNorm2d.
    """

    def __init__(
        self,
        depth: int,
        return_idx: Sequence[int] = (1, 2, 3),
        act: str = "relu",
        freeze_at: int = -1,
        freeze_norm: bool = False,
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"PResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        block = BottleNeck if depth >= 50 else BasicBlock
        self.return_idx = list(return_idx)
        stem = [(3, 32, 2, "conv1_1"), (32, 32, 1, "conv1_2"), (32, 64, 1, "conv1_3")]
        self.conv1 = nn.Sequential(
            OrderedDict((name, ConvNormLayer(cin, cout, 3, s, act=act)) for cin, cout, s, name in stem)
        )
        ch_in = 64
        self.res_layers = nn.ModuleList()  # stages after the last returned one are not built
        num_stages = max(self.return_idx) + 1
        for i, (count, width) in enumerate(zip(DEPTHS[depth][:num_stages], STAGE_WIDTHS)):
            self.res_layers.append(Blocks(block, ch_in, width, count, i, act))
            ch_in = width * block.expansion
        self.out_channels = [STAGE_WIDTHS[i] * block.expansion for i in self.return_idx]
        self.out_strides = [STAGE_STRIDES[i] for i in self.return_idx]

        if freeze_at >= 0:
            frozen = [self.conv1, *self.res_layers[: min(freeze_at, len(self.res_layers))]]
            for module in frozen:
                module.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = max_pool_3x3_s2(self.conv1(x))
        outs = []
        for i, stage in enumerate(self.res_layers):
            x = stage(x)
            if i in self.return_idx:
                outs.append(x)
        return outs


# the original RT-DETR's defaults: r18vd/r34vd train everything; r50vd/r101vd freeze the stem, FrozenBN
BACKBONES = {
    "resnet_18vd": BackboneSpec(partial(PResNet, 18), freeze_at=-1, freeze_norm=False),
    "resnet_34vd": BackboneSpec(partial(PResNet, 34), freeze_at=-1, freeze_norm=False),
    "resnet_50vd": BackboneSpec(partial(PResNet, 50), freeze_at=0, freeze_norm=True),
    "resnet_101vd": BackboneSpec(partial(PResNet, 101), freeze_at=0, freeze_norm=True),
}
