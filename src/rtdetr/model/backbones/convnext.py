"""ConvNeXt (v1, with TAO's 3x3 projections) and ConvNeXt-V2 backbones on timm's networks.

The network is timm's ``features_only`` ConvNeXt (parameters ``body.stem_0``, ``body.stages_1.blocks.0...``).
``convnext_*`` is ConvNeXt v1 (layer scale 1e-6) and, as in TAO's RT-DETR, returns exactly stages 1-3,
each through a 3x3 convolution (stride 1, padding 1, with bias, no norm) to 512, 1024 and 2048 channels
named ``conv_512``, ``conv_1024`` and ``conv_2048``. ``convnextv2_*`` (GRN, no layer scale) returns the
requested stages as they are. ``adapt_state_dict`` accepts Meta's and TAO's key layouts (the same names:
``downsample_layers``, ``stages.i.j.dwconv``, ``grn.gamma`` of shape [1, 1, 1, C]) and timm's own.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from types import SimpleNamespace

import timm
import torch
from timm.models.convnext import checkpoint_filter_fn
from torch import nn

from rtdetr.model.backbones.base import BackboneSpec

V1_VARIANTS = ("tiny", "small", "base", "large", "xlarge")
V2_VARIANTS = ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "huge")
STAGE_STRIDES = [4, 8, 16, 32]
# TAO's projections of the three returned v1 stages: parameter name -> output channels
PROJECTIONS = {"conv_512": 512, "conv_1024": 1024, "conv_2048": 2048}
PROJECTED_STAGES = [1, 2, 3]

_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "body.", "0.")
_META_KEY = re.compile(r"downsample_layers\.\d+\.\d+\.|stages\.\d+\.\d+\.")  # Meta's and TAO's layout
_TIMM_KEY = re.compile(r"(stem|stages)[._](\d+)\.")  # timm's (stem.0, stages.1) or features_only's (stem_0)
_HEAD_KEY = re.compile(r"(head|norm|norm_pre)\.")  # classifier and the final norm before it


def _meta_to_timm(name: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """One Meta/TAO tensor under timm's classification-model name, by timm's own converter.

    The converter reshapes 2-D tensors to the model's shape; the stand-in model gives the tensor's
    own shape, so a tensor that does not fit is reported by the loader rather than raising here.
    """
    stand_in = SimpleNamespace(state_dict=lambda: defaultdict(lambda: value))
    return checkpoint_filter_fn({name: value}, stand_in)


class ConvNeXtBackbone(nn.Module):
    """timm's ConvNeXt / ConvNeXt-V2 returning the stages in ``return_idx`` (0..3 -> strides 4..32).

    forward: images [B, 3, H, W] -> list of [B, out_channels[i], H / out_strides[i], W / out_strides[i]].
    With ``project`` (TAO's ConvNeXt v1) ``return_idx`` must be [1, 2, 3] and each level goes through a
    3x3 convolution to 512/1024/2048 channels. ``freeze_at`` >= 0 freezes the stem and the first
    ``freeze_at`` stages (each with its downsampling layer); ``freeze_norm`` is accepted and ignored, as
    ConvNeXt has no BatchNorm.
    """

    def __init__(
        self,
        timm_name: str,
        return_idx: Sequence[int] = (1, 2, 3),
        freeze_at: int = -1,
        freeze_norm: bool = False,
        project: bool = False,
    ):
        super().__init__()
        self.timm_name = timm_name
        self.return_idx = list(return_idx)
        if project and self.return_idx != PROJECTED_STAGES:
            raise ValueError(
                f"model.return_interm_indices must be {PROJECTED_STAGES} for {timm_name} (TAO's ConvNeXt "
                f"returns exactly these three levels, projected to 512/1024/2048 channels), got {self.return_idx}"
            )
        self.body = timm.create_model(
            timm_name, pretrained=False, features_only=True, out_indices=tuple(self.return_idx)
        )
        widths = self.body.feature_info.channels()
        self.projection_names = list(PROJECTIONS) if project else []
        for name, width in zip(self.projection_names, widths):
            conv = nn.Conv2d(width, PROJECTIONS[name], kernel_size=3, stride=1, padding=1, bias=True)
            nn.init.trunc_normal_(conv.weight, std=0.02)  # the initialisation of TAO's and timm's convs
            nn.init.zeros_(conv.bias)
            self.add_module(name, conv)
        self.out_channels = [PROJECTIONS[n] for n in self.projection_names] if project else widths
        self.out_strides = [STAGE_STRIDES[i] for i in self.return_idx]

        if freeze_at >= 0:
            stages = [f"stages_{i}" for i in range(min(freeze_at, max(self.return_idx) + 1))]
            for name in ["stem_0", "stem_1", *stages]:
                getattr(self.body, name).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = list(self.body(x))
        if self.projection_names:
            feats = [getattr(self, name)(f) for name, f in zip(self.projection_names, feats)]
        return feats

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Meta's, TAO's and timm's key names -> this module's; classifier tensors are dropped.

        Wrapper prefixes (a TAO RT-DETR checkpoint's ``model.model.backbone.``, ``module.``) are
        removed from the keys that this turns into ConvNeXt names; TAO's ``conv_512``.. keep their
        names. Keys in no known layout are returned unchanged, for the loader to report.
        """
        own = self.state_dict()
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            name = key
            while not self._known(name, own) and name.startswith(_WRAPPER_PREFIXES):
                name = name[next(len(p) for p in _WRAPPER_PREFIXES if name.startswith(p)) :]
            if name in own:
                out[name] = value
            elif _META_KEY.match(name):
                for timm_name, tensor in _meta_to_timm(name, value).items():
                    out.update(self._from_timm(timm_name, tensor))
            elif _TIMM_KEY.match(name) or _HEAD_KEY.match(name):
                out.update(self._from_timm(name, value))
            else:
                out[key] = value
        return out

    @staticmethod
    def _known(name: str, own: dict[str, torch.Tensor]) -> bool:
        return name in own or any(p.match(name) for p in (_META_KEY, _TIMM_KEY, _HEAD_KEY))

    @staticmethod
    def _from_timm(name: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """timm's name (``stem.0.weight``, ``stages_1.blocks.0...``) -> ``body.stem_0.weight``...; head dropped."""
        if _HEAD_KEY.match(name):
            return {}
        return {_TIMM_KEY.sub(r"body.\1_\2.", name, count=1): value}


BACKBONES: dict[str, BackboneSpec] = {
    **{
        f"convnext_{v}": BackboneSpec(partial(ConvNeXtBackbone, f"convnext_{v}", project=True))
        for v in V1_VARIANTS
    },
    **{f"convnextv2_{v}": BackboneSpec(partial(ConvNeXtBackbone, f"convnextv2_{v}")) for v in V2_VARIANTS},
}
