"""Plain ResNet (TAO's `resnet_*`): 7x7 stem, strided 1x1 projection shortcut, stride on the 3x3.

Parameter names are those of torchvision and timm (`conv1`, `bn1`, `layer1.0.conv1`,
`layer2.0.downsample.0/1`), so their ImageNet checkpoints load directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from rtdetr.model.backbones.base import BackboneSpec
from rtdetr.model.layers import freeze_batch_norm, fuse_conv_norm, max_pool_3x3_s2

DEPTHS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
STAGE_WIDTHS = [64, 128, 256, 512]
STAGE_STRIDES = [4, 8, 16, 32]


@torch.no_grad()
def _fuse_pairs_(module: nn.Module, pairs: Sequence[tuple[str, str]]) -> None:
    """Fold each named norm into its named conv (eval statistics); the norm becomes nn.Identity."""
    for conv_name, norm_name in pairs:
        norm = getattr(module, norm_name)
        if not isinstance(norm, nn.Identity):
            setattr(module, conv_name, fuse_conv_norm(getattr(module, conv_name), norm))
            setattr(module, norm_name, nn.Identity())


def _conv(ch_in: int, ch_out: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=kernel_size // 2, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, ch_in: int, width: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = _conv(ch_in, width, 3, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def convert_to_deploy(self) -> None:
        _fuse_pairs_(self, [("conv1", "bn1"), ("conv2", "bn2")])


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, ch_in: int, width: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = _conv(ch_in, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, width * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def convert_to_deploy(self) -> None:
        _fuse_pairs_(self, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")])


class ResNet(nn.Module):
    """Plain ResNet returning the stages in `return_idx` (0..3 -> strides 4..32).

    forward: images [B, 3, H, W] -> list of [B, out_channels[i], H / out_strides[i], W / out_strides[i]].
    `freeze_at` >= 0 freezes the stem and the first `freeze_at` stages; `freeze_norm` makes every
    BatchNorm a FrozenBatchNorm2d.
    """

    def __init__(
        self,
        depth: int,
        return_idx: Sequence[int] = (1, 2, 3),
        freeze_at: int = -1,
        freeze_norm: bool = False,
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        block = Bottleneck if depth >= 50 else BasicBlock
        self.return_idx = list(return_idx)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        ch_in = 64
        self.stage_names = []
        for i in range(max(self.return_idx) + 1):  # stages after the last returned one are not built
            width, stride = STAGE_WIDTHS[i], 1 if i == 0 else 2
            blocks = []
            for b in range(DEPTHS[depth][i]):
                downsample = None
                if b == 0 and (stride != 1 or ch_in != width * block.expansion):
                    downsample = nn.Sequential(
                        _conv(ch_in, width * block.expansion, 1, stride),
                        nn.BatchNorm2d(width * block.expansion),
                    )
                blocks.append(block(ch_in, width, stride if b == 0 else 1, downsample))
                ch_in = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_names.append(f"layer{i + 1}")
        self.out_channels = [STAGE_WIDTHS[i] * block.expansion for i in self.return_idx]
        self.out_strides = [STAGE_STRIDES[i] for i in self.return_idx]

        if freeze_at >= 0:
            frozen = [self.conv1, self.bn1, *(getattr(self, n) for n in self.stage_names[:freeze_at])]
            for module in frozen:
                module.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = max_pool_3x3_s2(x) if isinstance(self.maxpool, nn.MaxPool2d) else self.maxpool(x)
        outs = []
        for i, name in enumerate(self.stage_names):
            x = getattr(self, name)(x)
            if i in self.return_idx:
                outs.append(x)
        return outs

    def convert_to_deploy(self) -> None:
        _fuse_pairs_(self, [("conv1", "bn1")])


# TAO's plain ResNets: FrozenBN, stem and layer1 frozen, layer2-4 trained
BACKBONES = {
    f"resnet_{depth}": BackboneSpec(partial(ResNet, depth), freeze_at=1, freeze_norm=True) for depth in DEPTHS
}
