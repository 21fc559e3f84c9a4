"""Distillation criteria: what a student's features pay for differing from a frozen teacher's.

A binding names one teacher value and one student value (a tensor, or a list of tensors such as the
encoder's per-level maps) and a criterion; a list is compared element by element and the losses
summed. Every criterion is computed in float32, also under autocast.

- ``L1``: mean absolute difference.
- ``L2``: mean squared difference.
- ``KL``: KL(teacher || student) between softmaxes, ``kl_div(log_softmax(s), log_softmax(t),
  log_target=True)`` with reduction mean (the mean over every element). The softmax runs over the
  channels of a 4-D map [B, C, H, W] (dim 1) and over the last dimension otherwise (the classes of
  logits [B, Q, C]).
- ``IOU``: feature imitation on [B, C, H, W] maps, masked where the teacher's selected queries look
  (see :func:`query_mask`); the MSE of the masked teacher and masked student maps, summed over levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, box_iou

CRITERIA = ("L1", "L2", "KL", "IOU")
MASK_FLOOR = 0.01  # the smallest mask value before normalising: every location keeps some weight
FEATURE_NAMES = ("srcs", "dsrcs")  # the encoder's maps, recorded by the model (RTDETR.forward)
QUERY_KEYS = ("enc_topk_memory", "enc_topk_logits", "enc_topk_boxes")  # the teacher's, for IOU


@dataclass(frozen=True)
class Binding:
    """One teacher value and one student value compared by ``criterion``; its loss counts ``weight``
    times. A name is ``srcs``, ``dsrcs`` or a module path (its forward output)."""

    teacher: str
    student: str
    criterion: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")


def binding_names(bindings: Sequence[Binding]) -> list[str]:
    """The logged name of each binding's loss, ``distill_<index>_<criterion>_<student name>``:
    unique, also for two bindings of the same student module."""
    return [f"distill_{i}_{b.criterion}_{b.student}" for i, b in enumerate(bindings)]


def tensors_of(value: object) -> list[torch.Tensor]:
    """The tensors of a captured value, in order: a tensor, or lists, tuples and dicts of them."""
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_of(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_of(v)]
    return []


def l1(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(student.float(), teacher.float())


def l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student.float(), teacher.float())


def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``kl_div(log_softmax(s), log_softmax(t), log_target=True)``, reduction mean, written out (torch
    warns on every call with reduction mean): mean of ``exp(t) * (t - s)`` over the log-softmaxes."""
    dim = 1 if student.dim() == 4 else -1
    log_s = F.log_softmax(student.float(), dim)
    log_t = F.log_softmax(teacher.float(), dim)
    return (log_t.exp() * (log_t - log_s)).mean()


def query_weights(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]) -> torch.Tensor:
    """Weight [B, N] of each teacher query: its score (sigmoid of its best class logit) times its best
    IoU with the image's ground truth (0 without any). ``logits`` [B, N, C] raw; ``boxes`` [B, N, 4]
    and the targets' "boxes" [M, 4] normalised cxcywh: both sides in one coordinate system."""
    scores = logits.float().amax(-1).sigmoid()
    best = torch.zeros_like(scores)
    for i, t in enumerate(targets):
        gt = t["boxes"].to(boxes.device).float()
        if len(gt):
            iou = box_iou(box_convert(boxes[i].float(), "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy"))
            best[i] = iou.amax(1)
    return scores * best


def query_mask(feature: torch.Tensor, queries: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Where the teacher's queries look in one of its maps: mask [B, H, W] in (0, 1].

    ``feature`` [B, C, H, W] (normalised over C) and ``queries`` [B, N, C] (normalised over C) give
    the cosine similarity of every query with every location; the mask is their sum weighted by
    ``weights`` [B, N], floored at 0.01 and divided by its maximum per image.
    """
    similarity = torch.einsum(
        "bnc,bchw->bnhw", F.normalize(queries.float(), dim=-1), F.normalize(feature.float(), dim=1)
    )
    mask = (similarity * weights[:, :, None, None]).sum(1).clamp(min=MASK_FLOOR)
    return mask / mask.amax(dim=(1, 2), keepdim=True)


def iou_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], queries: dict, targets: list[dict]
) -> torch.Tensor:
    """Sum over levels of MSE(mask * teacher map, mask * student map); ``queries`` holds the teacher's
    enc_topk_memory [B, N, C], enc_topk_logits [B, N, classes] and enc_topk_boxes [B, N, 4]."""
    weights = query_weights(queries["enc_topk_logits"], queries["enc_topk_boxes"], targets)
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher):
        mask = query_mask(t, queries["enc_topk_memory"], weights)[:, None]
        total = total + F.mse_loss(mask * s.float(), mask * t.float())
    return total


_ELEMENTWISE = {"L1": l1, "L2": l2, "KL": kl}


class DistillationLoss(nn.Module):
    """The bindings' losses, each already multiplied by its weight, named by :func:`binding_names`.

    forward(student, teacher, targets): ``student`` and ``teacher`` map each binding's name to its
    captured value (same structure and shapes on both sides); ``teacher`` also holds QUERY_KEYS when
    a binding uses IOU; ``targets`` per image "boxes" [M, 4] normalised cxcywh.
    """

    def __init__(self, bindings: Sequence[Binding]):
        super().__init__()
        self.bindings = list(bindings)
        self.names = binding_names(self.bindings)

    def forward(self, student: dict, teacher: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        losses = {}
        for name, b in zip(self.names, self.bindings):
            s, t = tensors_of(student[b.student]), tensors_of(teacher[b.teacher])
            with torch.autocast(s[0].device.type, enabled=False):
                if b.criterion == "IOU":
                    loss = iou_loss(s, t, teacher, targets)
                else:
                    loss = sum(_ELEMENTWISE[b.criterion](si, ti) for si, ti in zip(s, t))
            losses[name] = b.weight * loss
        return losses
