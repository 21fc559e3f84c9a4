"""Optimizer parameter groups and the learning-rate schedule of a training run."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

NORM_TYPES = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.SyncBatchNorm)


def _is_backbone(name: str, backbone_names: Sequence[str]) -> bool:
    # TAO wraps its backbone as `backbone.0`; ours is `backbone`. Both spellings select it.
    prefixes = {"backbone."} | {p if p.endswith(".") else p + "." for p in backbone_names}
    return any(name.startswith(p) for p in prefixes) or name.startswith("backbone.")


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    lr_backbone: float,
    weight_decay: float,
    backbone_names: Sequence[str] = ("backbone.0",),
    linear_proj_names: Sequence[str] = ("reference_points", "sampling_offsets"),
    lr_linear_proj_mult: float = 0.1,
) -> list[dict]:
    """Trainable parameters grouped by (lr, weight decay).

    Backbone parameters train at ``lr_backbone``; parameters whose names contain one of
    ``linear_proj_names`` at ``lr * lr_linear_proj_mult``; the rest at ``lr``. Norm-layer parameters
    and biases outside the backbone have no weight decay. Each group carries a ``name``.
    """
    # the norm layers' own parameters only: a module that merely holds a norm (ConvNormLayer) keeps
    # its convolution's weight decay
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)
    }
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _is_backbone(name, backbone_names):
            kind = "backbone"
        elif any(p in name for p in linear_proj_names):
            kind = "linear_proj"
        else:
            kind = "base"
        # every bias, attention's in_proj_bias too
        no_decay = kind != "backbone" and (id(param) in norm_params or name.endswith("bias"))
        groups.setdefault((kind, no_decay), []).append(param)
    lrs = {"backbone": lr_backbone, "linear_proj": lr * lr_linear_proj_mult, "base": lr}
    out = []
    for (kind, no_decay), params in sorted(groups.items()):
        out.append(
            {
                "name": f"{kind}{'_no_decay' if no_decay else ''}",
                "params": params,
                "lr": lrs[kind],
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        )
    return out


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The current lr of the ``base`` groups (train.optim.lr through its schedule): the one to log;
    the first group's where no group has that name (e.g. all parameters in the backbone)."""
    groups = optimizer.param_groups
    return next((g["lr"] for g in groups if g.get("name", "").startswith("base")), groups[0]["lr"])


def build_optimizer(
    groups: list[dict], *, optimizer: str, lr: float, momentum: float, weight_decay: float, fused: bool = True
):
    """AdamW (``momentum`` is beta1) or SGD with momentum over the parameter groups.

    With ``fused``, torch's fused implementation where the parameters' device has one (the same
    update, one kernel over all parameters: AdamW's step on the CPU for r18vd takes 13 ms instead of
    53 ms), otherwise the default one."""
    if optimizer == "AdamW":
        kind, kwargs = torch.optim.AdamW, {"betas": (momentum, 0.999)}
    elif optimizer == "SGD":
        kind, kwargs = torch.optim.SGD, {"momentum": momentum}
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if not fused:
        return kind(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    try:
        return kind(groups, lr=lr, weight_decay=weight_decay, fused=True, **kwargs)
    except RuntimeError:  # e.g. parameters on a device without a fused kernel
        return kind(groups, lr=lr, weight_decay=weight_decay, **kwargs)


class StepSchedule:
    """LR factor per optimizer step: linear warm-up over ``warmup_steps``, then decay by epoch.

    MultiStep multiplies by ``decay`` at each epoch in ``milestones``; StepLR every ``step_size``
    epochs. Used with torch's LambdaLR stepped every optimizer step (picklable: it is saved with the
    scheduler state in checkpoints).
    """

    def __init__(
        self,
        steps_per_epoch: int,
        kind: str = "MultiStep",
        milestones: Sequence[int] = (),
        step_size: int = 1000,
        decay: float = 0.1,
        warmup_steps: int = 0,
    ):
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.kind = kind
        self.milestones = sorted(int(m) for m in milestones)
        self.step_size = int(step_size)
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        if self.kind == "StepLR":
            passed = epoch // self.step_size
        else:
            passed = sum(1 for m in self.milestones if epoch >= m)
        factor = self.decay**passed
        if self.warmup_steps > 0 and step < self.warmup_steps:
            factor *= (step + 1) / self.warmup_steps
        return factor
