"""Backbone factory: `build_backbone(name, return_idx)` and loading of pretrained backbone weights.

Every backbone maps images [B, 3, H, W] to a list of feature maps, one per entry of `return_idx`
(indices into the four ResNet stages, 0..3 -> strides 4, 8, 16, 32), and exposes `out_channels`
and `out_strides` for those levels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from rtdetr.errors import UserError
from rtdetr.model.backbones import convnext, efficientvit, fan, presnet, resnet
from rtdetr.model.backbones.base import BackboneSpec
from rtdetr.model.weights import load_error_reason, torch_load_weights

logger = logging.getLogger(__name__)

_BACKBONES: dict[str, BackboneSpec] = {
    **resnet.BACKBONES, **presnet.BACKBONES, **convnext.BACKBONES, **efficientvit.BACKBONES, **fan.BACKBONES
}  # fmt: skip

_STRIP_PREFIXES = ("module.", "model.", "backbone.", "body.", "0.")


def available_backbones() -> list[str]:
    return list(_BACKBONES)


def build_backbone(
    name: str,
    return_idx: Sequence[int] = (1, 2, 3),
    pretrained_path: str | Path | None = None,
    freeze_norm: bool | None = None,
    freeze_at: int | None = None,
) -> nn.Module:
    """Build a backbone by name; None for `freeze_norm`/`freeze_at` means the variant's default.

    `freeze_at` >= 0 freezes the stem and the first `freeze_at` stages (-1: nothing frozen).
    With `pretrained_path`, weights are loaded by name (see `load_pretrained_backbone`).
    """
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(_BACKBONES)}")
    return_idx = list(return_idx)
    if not return_idx or sorted(set(return_idx)) != return_idx or not all(0 <= i <= 3 for i in return_idx):
        raise ValueError(f"return_idx must be increasing stage indices in 0..3, got {return_idx}")
    spec = _BACKBONES[name]
    backbone = spec.build(
        return_idx=return_idx,
        freeze_at=spec.freeze_at if freeze_at is None else freeze_at,
        freeze_norm=spec.freeze_norm if freeze_norm is None else freeze_norm,
    )
    if pretrained_path is not None:
        load_pretrained_backbone(backbone, pretrained_path)
    return backbone


@dataclass
class LoadReport:
    """What happened to each tensor when loading pretrained weights (names are the module's own)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the module, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file (original names), not used
    mismatched: list[str] = field(default_factory=list)  # name matched, shape did not

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors; missing {len(self.missing)}: {self.missing}; "
            f"unexpected {len(self.unexpected)}: {self.unexpected}; "
            f"shape mismatch {len(self.mismatched)}: {self.mismatched}"
        )


def read_state_dict(path: str | Path, setting: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt/.ckpt or .safetensors file, unwrapped from "state_dict"/"model"/"module"."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    obj = torch_load_weights(path, setting)
    while isinstance(obj, Mapping):
        inner = next(
            (obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            break
        obj = inner
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_pretrained_backbone(
    backbone: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    setting: str = "model.pretrained_backbone_path",
) -> LoadReport:
    """Copy tensors from a checkpoint path or state dict into `backbone` by name.

    Prefixes such as "module.", "model.", "backbone." are stripped when that makes a name match.
    Tensors that do not fit are skipped and reported (returned and logged as a warning). A missing
    or unreadable file, or one of which no tensor fits, is a UserError naming ``setting``.
    """
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise UserError(f"{setting}: {source}: file not found")
        try:
            state = read_state_dict(source, setting)
        except UserError:
            raise
        except Exception as exc:  # safetensors raises many kinds for a bad file
            raise UserError(f"{setting}: {source}: {load_error_reason(exc)}") from exc
    else:
        state = dict(source)
    adapt = getattr(backbone, "adapt_state_dict", None)
    if adapt is not None:  # other projects' key names -> the backbone's own
        state = adapt(state)
    own = backbone.state_dict()
    report = LoadReport()
    matched: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        while name not in own and name.startswith(_STRIP_PREFIXES):
            name = name[next(len(p) for p in _STRIP_PREFIXES if name.startswith(p)) :]
        if name not in own:
            if not name.endswith("num_batches_tracked"):  # absent from frozen norms; meaningless
                report.unexpected.append(key)
        elif own[name].shape != value.shape:
            report.mismatched.append(name)
        else:
            matched[name] = value
    report.loaded = sorted(matched)
    if not matched:
        example = (
            f" (its tensors are named e.g. {next(iter(state))!r}, the backbone's {next(iter(own))!r})"
            if state
            else ""
        )
        raise UserError(
            f"{setting}: {source if isinstance(source, (str, Path)) else 'the state dict'}: no tensor fits the "
            f"backbone{example}; give weights of the spec's model.backbone"
        )
    report.missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    backbone.load_state_dict(matched, strict=False)
    log = logger.warning if report.missing or report.unexpected or report.mismatched else logger.info
    log("pretrained backbone: %s", report.summary())
    return report
