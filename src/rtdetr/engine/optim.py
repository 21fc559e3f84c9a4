"""Optimizer parameter groups and the learning-rate schedule of a training run."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from rtdetr.errors import UserError

log = logging.getLogger(__name__)

NORM_TYPES = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.SyncBatchNorm)


def backbone_prefixes(model: nn.Module, backbone_names: Sequence[str]) -> tuple[str, ...]:
    """The parameter-name prefixes of ``model.backbone_names``. TAO's backbone is `backbone.0`, ours
    `backbone`: "backbone.0" (TAO's default) and names under it select ours. A prefix that matches no
    parameter is a UserError (a typo would otherwise train the backbone at ``lr``)."""
    prefixes = []
    for name in backbone_names:
        name = name.rstrip(".")
        if name == "backbone.0" or name.startswith("backbone.0."):
            name = "backbone" + name[len("backbone.0") :]
        prefixes.append(name + ".")
    names = [n for n, _ in model.named_parameters()]
    for given, prefix in zip(backbone_names, prefixes):
        if not any(n.startswith(prefix) for n in names):
            tops = sorted({n.split(".")[0] + "." for n in names})
            raise UserError(
                f"model.backbone_names: {given!r} matches no parameter of the model; parameter names start "
                f"with {', '.join(tops)} (TAO's 'backbone.0' is this model's 'backbone')"
            )
    return tuple(prefixes)


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
    backbone = backbone_prefixes(model, backbone_names)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(backbone):
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
    groups: list[dict],
    *,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    fused: bool = True,
    variant: Callable[[type], type] | None = None,
):
    """AdamW (``momentum`` is beta1) or SGD with momentum over the parameter groups.

    With ``fused``, torch's fused implementation where the parameters' device has one (the same
    update, one kernel over all parameters instead of a loop over them), otherwise the default one;
    ``variant`` maps the fused optimizer class to a subclass (rtdetr.cpu's in-place step)."""
    if optimizer == "AdamW":
        kind, kwargs = torch.optim.AdamW, {"betas": (momentum, 0.999)}
    elif optimizer == "SGD":
        kind, kwargs = torch.optim.SGD, {"momentum": momentum}
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if not fused:
        return kind(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    try:
        fused_kind = variant(kind) if variant is not None else kind
        return fused_kind(groups, lr=lr, weight_decay=weight_decay, fused=True, **kwargs)
    except RuntimeError:  # e.g. parameters on a device without a fused kernel
        return kind(groups, lr=lr, weight_decay=weight_decay, **kwargs)


class StepSchedule:
    """LR factor per optimizer step: linear warm-up over ``warmup_steps``, then decay by epoch.

    MultiStep multiplies by ``decay`` at each epoch in ``milestones``; StepLR every ``step_size``
    epochs. Used with torch's LambdaLR stepped every optimizer step (picklable: it is saved with the
    scheduler state in checkpoints).

    Epochs count from an anchor (``start_epoch``) that the engine moves at the start of every epoch,
    with that run's steps per epoch: a run resumed with another batch size or dataset decays at its
    own epoch boundaries, not where the steps per epoch of the checkpoint's run would put them.
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
        self.anchor_step = 0
        self.anchor_epoch = 0

    def start_epoch(self, step: int, epoch: int, steps_per_epoch: int) -> None:
        """Epoch ``epoch`` starts at optimizer step ``step`` and lasts ``steps_per_epoch`` steps."""
        self.anchor_step, self.anchor_epoch = int(step), int(epoch)
        self.steps_per_epoch = max(1, int(steps_per_epoch))

    def epoch(self, step: int) -> int:
        return self.anchor_epoch + max(0, step - self.anchor_step) // self.steps_per_epoch

    def __call__(self, step: int) -> float:
        epoch = self.epoch(step)
        if self.kind == "StepLR":
            passed = epoch // self.step_size
        else:
            passed = sum(1 for m in self.milestones if epoch >= m)
        factor = self.decay**passed
        if self.warmup_steps > 0 and step < self.warmup_steps:
            factor *= (step + 1) / self.warmup_steps
        return factor


# the schedule's settings and the spec fields that set them
_SCHEDULE_FIELDS = {
    "kind": "lr_scheduler", "milestones": "lr_steps", "step_size": "lr_step_size", "decay": "lr_decay",
    "warmup_steps": "warmup_steps",
}  # fmt: skip


def spec_schedule_settings(optim) -> dict:
    """The StepSchedule settings an OptimConfig gives."""
    return {
        "kind": optim.lr_scheduler, "milestones": sorted(int(m) for m in optim.lr_steps),
        "step_size": int(optim.lr_step_size), "decay": float(optim.lr_decay),
        "warmup_steps": int(optim.warmup_steps),
    }  # fmt: skip


def _momentum(group: dict) -> float | None:
    return group["betas"][0] if "betas" in group else group.get("momentum")


def resumed_changes(
    saved_groups: list[dict], saved_schedule: dict | None, new_groups: list[dict], optim
) -> list[str]:
    """What a resumed run changes against its checkpoint's optimizer and schedule, one
    ``train.optim.<field> old -> new`` item per setting (groups are matched by name)."""
    changes = []
    saved = {g.get("name"): g for g in saved_groups}
    for group in new_groups:
        old = saved.get(group["name"])
        if old is None:
            continue
        old_lr = old.get("initial_lr", old["lr"])
        if not math.isclose(old_lr, group["lr"], rel_tol=1e-9, abs_tol=0.0):
            changes.append(f"learning rate of the {group['name']} parameters {old_lr:g} -> {group['lr']:g}")
        if not math.isclose(old["weight_decay"], group["weight_decay"], rel_tol=1e-9, abs_tol=0.0):
            changes.append(
                f"weight decay of the {group['name']} parameters {old['weight_decay']:g} -> {group['weight_decay']:g}"
            )
    momentums = {_momentum(g) for g in saved_groups} - {None}
    if momentums and momentums != {optim.momentum}:
        changes.append(
            f"train.optim.momentum {', '.join(f'{m:g}' for m in sorted(momentums))} -> {optim.momentum:g}"
        )
    if saved_schedule:
        new = spec_schedule_settings(optim)
        for key, spec_name in _SCHEDULE_FIELDS.items():
            if key in saved_schedule and saved_schedule[key] != new[key]:
                changes.append(f"train.optim.{spec_name} {saved_schedule[key]} -> {new[key]}")
    return list(dict.fromkeys(changes))


def apply_spec_settings(optimizer: torch.optim.Optimizer, scheduler, new_groups: list[dict], optim) -> None:
    """After a checkpoint's optimizer and scheduler state were restored: the spec's learning rates,
    weight decay, momentum and schedule settings replace the saved ones (the state itself, moments
    and step counts, stays); groups are matched by name."""
    wanted = {g["name"]: g for g in new_groups}
    for i, group in enumerate(optimizer.param_groups):
        new = wanted.get(group.get("name"))
        if new is None:
            continue
        group["initial_lr"] = new["lr"]
        group["weight_decay"] = new["weight_decay"]
        if "betas" in group:
            group["betas"] = (optim.momentum, group["betas"][1])
        elif "momentum" in group:
            group["momentum"] = optim.momentum
        if scheduler is not None and i < len(scheduler.base_lrs):
            scheduler.base_lrs[i] = new["lr"]
    schedule = scheduler.lr_lambdas[0] if scheduler is not None else None
    if isinstance(schedule, StepSchedule):
        for key, value in spec_schedule_settings(optim).items():
            setattr(schedule, key, value)
