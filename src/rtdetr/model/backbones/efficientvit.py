"""EfficientViT (MIT) backbones built from timm's blocks, each returned level through a LayerNorm.

The blocks are timm's (``timm.models.efficientvit_mit``); the containers are arranged as in MIT's
and TAO's networks, so parameter names are theirs: the B series has ``input_stem.op_list.*`` and
``stages.0-3.op_list.*``, the L series ``stages.0.op_list.*`` (the stem) and ``stages.1-4.op_list.*``;
below the containers timm's names equal MIT's (``main.inverted_conv.conv``, ``context_module.main.qkv``
...). The LayerNorms are TAO's ``norm{i}`` (nn.LayerNorm over channels, eps 1e-5), so the backbone of a
TAO RT-DETR checkpoint loads as it is; ``adapt_state_dict`` maps MIT's and timm's files to these names.

Numerics follow TAO's (MIT's) code where timm differs: LiteMLA's eps is 1e-15 (timm: 1e-5) and the
L series' BatchNorm eps is 1e-5 (timm and MIT's ImageNet models: 1e-7). TAO's quadratic-attention path
for maps of at most `head_dim` pixels computes the same function as the linear one used here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import GELUTanh
from timm.models.efficientvit_mit import EfficientVitLargeStage, EfficientVitStage, LiteMLA, Stem
from torch import nn

from rtdetr.model.backbones.base import BackboneSpec
from rtdetr.model.layers import channels_last_dense, freeze_batch_norm, fuse_conv_norm, is_norm2d

LITEMLA_EPS = 1e-15  # MIT's and TAO's LiteMLA eps
BN_EPS = 1e-5  # nn.BatchNorm2d's default, which TAO's networks use for both series
STAGE_STRIDES = [4, 8, 16, 32]


@dataclass(frozen=True)
class Variant:
    """Widths and depths of the stem and the four stages, attention head width, and the series."""

    widths: tuple[int, int, int, int, int]
    depths: tuple[int, int, int, int, int]
    head_dim: int
    large: bool


VARIANTS: dict[str, Variant] = {
    "b0": Variant((8, 16, 32, 64, 128), (1, 2, 2, 2, 2), 16, False),
    "b1": Variant((16, 32, 64, 128, 256), (1, 2, 3, 3, 4), 16, False),
    "b2": Variant((24, 48, 96, 192, 384), (1, 3, 4, 4, 6), 32, False),
    "b3": Variant((32, 64, 128, 256, 512), (1, 4, 6, 6, 9), 32, False),
    "l0": Variant((32, 64, 128, 256, 512), (1, 1, 1, 4, 4), 32, True),
    "l1": Variant((32, 64, 128, 256, 512), (1, 1, 1, 6, 6), 32, True),
    "l2": Variant((32, 64, 128, 256, 512), (1, 2, 2, 8, 8), 32, True),
    "l3": Variant((64, 128, 256, 512, 1024), (1, 2, 2, 8, 8), 32, True),
}

_LEADING = re.compile(r"^(?:module\.|model\.)+")
_TIMM_STEM = re.compile(r"^stem\.(in_conv|res(\d+))\.")
_TIMM_STAGE = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")


class OpSequential(nn.Module):
    """Runs the modules of `op_list` in order (MIT's container, which gives its parameter names)."""

    def __init__(self, ops: Sequence[nn.Module]):
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class EfficientViT(nn.Module):
    """EfficientViT B or L network returning stages `return_idx` (0..3 -> strides 4..32) through LayerNorms.

    forward: images [B, 3, H, W] -> list of [B, out_channels[i], H / out_strides[i], W / out_strides[i]],
    each level LayerNorm-ed over channels (TAO's `norm{i}`) in the memory format of the stage's output.
    Stages after the last returned one are not built. `freeze_at` >= 0 freezes the stem and the first
    `freeze_at` stages; `freeze_norm` makes every BatchNorm a FrozenBatchNorm2d.
    """

    def __init__(
        self,
        variant: str,
        return_idx: Sequence[int] = (1, 2, 3),
        freeze_at: int = -1,
        freeze_norm: bool = False,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientViT variant {variant!r}; available: {', '.join(VARIANTS)}")
        cfg = VARIANTS[variant]
        self.return_idx = list(return_idx)
        if not self.return_idx or not all(0 <= i <= 3 for i in self.return_idx):
            raise ValueError(
                f"model.return_interm_indices {self.return_idx}: efficientvit_{variant} has stages 0..3 only"
            )
        self.large = cfg.large
        widths, depths = cfg.widths, cfg.depths
        num_stages = max(self.return_idx) + 1
        norm = partial(nn.BatchNorm2d, eps=BN_EPS)
        act = GELUTanh if cfg.large else nn.Hardswish
        stem = Stem(3, widths[0], depths[0], norm, act, block_type="large" if cfg.large else "default")
        stages: list[nn.Module] = []
        for i in range(num_stages):
            if cfg.large:
                stage = EfficientVitLargeStage(
                    widths[i], widths[i + 1], depth=depths[i + 1], norm_layer=norm, act_layer=act,
                    head_dim=cfg.head_dim, vit_stage=i >= 3, fewer_norm=i >= 2,
                )  # fmt: skip
            else:
                stage = EfficientVitStage(
                    widths[i], widths[i + 1], depth=depths[i + 1], norm_layer=norm, act_layer=act,
                    expand_ratio=4, head_dim=cfg.head_dim, vit_stage=i >= 2,
                )  # fmt: skip
            stages.append(OpSequential(list(stage.blocks)))
        stem = OpSequential(list(stem.children()))
        if cfg.large:
            self.stages = nn.ModuleList([stem, *stages])
        else:
            self.input_stem = stem
            self.stages = nn.ModuleList(stages)
        for module in self.modules():
            if isinstance(module, LiteMLA):
                module.eps = LITEMLA_EPS
        for i in self.return_idx:
            self.add_module(f"norm{i}", nn.LayerNorm(widths[i + 1]))
        self.out_channels = [widths[i + 1] for i in self.return_idx]
        self.out_strides = [STAGE_STRIDES[i] for i in self.return_idx]

        if freeze_at >= 0:
            stem_module, stage_modules = self._parts()
            for module in [stem_module, *stage_modules[:freeze_at]]:
                module.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)

    def _parts(self) -> tuple[nn.Module, list[nn.Module]]:
        """The stem and the stages (the L series keeps its stem as `stages.0`, as MIT does)."""
        if self.large:
            return self.stages[0], list(self.stages[1:])
        return self.input_stem, list(self.stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem, stages = self._parts()
        x = stem(x)
        outs = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in self.return_idx:
                norm = getattr(self, f"norm{i}")
                y = norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                fmt = torch.channels_last if channels_last_dense(x) else torch.contiguous_format
                outs.append(y.contiguous(memory_format=fmt))
        return outs

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        """Fold every BatchNorm (eval statistics) into the conv before it; the norm becomes nn.Identity."""
        for module in self.modules():
            conv, norm = getattr(module, "conv", None), getattr(module, "norm", None)
            if type(conv) is nn.Conv2d and norm is not None and is_norm2d(norm):
                module.conv, module.norm = fuse_conv_norm(conv, norm), nn.Identity()

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MIT's, TAO's and timm's key names -> this module's; classification heads are dropped.

        A file whose keys name a `backbone.` (MIT's classifiers and segmenters, TAO's RT-DETR
        checkpoints `model.model.backbone.*`) gives only those tensors, cut after `backbone.`.
        timm's `stem.in_conv`/`stem.res{k}` become the stem's op_list 0/k+1 and `stages.{i}.blocks.{j}`
        becomes `stages.{i}.op_list.{j}` (L series: `stages.{i+1}`, its stem being `stages.0`).
        """
        if any("backbone." in key for key in state):
            state = {key.rsplit("backbone.", 1)[1]: v for key, v in state.items() if "backbone." in key}
        stem = "stages.0" if self.large else "input_stem"
        shift = 1 if self.large else 0
        out = {}
        for key, value in state.items():
            name = _LEADING.sub("", key)
            if name.startswith("head."):
                continue
            if match := _TIMM_STEM.match(name):
                index = 0 if match[1] == "in_conv" else int(match[2]) + 1
                name = f"{stem}.op_list.{index}.{name[match.end() :]}"
            elif match := _TIMM_STAGE.match(name):
                name = f"stages.{int(match[1]) + shift}.op_list.{match[2]}.{name[match.end() :]}"
            out[name] = value
        return out


BACKBONES: dict[str, BackboneSpec] = {
    f"efficientvit_{name}": BackboneSpec(partial(EfficientViT, name)) for name in VARIANTS
}
