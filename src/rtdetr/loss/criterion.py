"""RT-DETR set criterion: varifocal (or focal) classification, L1 and GIoU box losses.

Applied to the final decoder layer, every auxiliary layer, the encoder's query selection (each
matched independently) and the denoising groups (fixed positive -> ground-truth assignment).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn
from torchvision.ops import box_convert, sigmoid_focal_loss

from rtdetr.loss.matcher import HungarianMatcher

LOSS_TYPES = ("vfl", "focal", "boxes")
_AREA_EPS = 1e-7  # only degenerate (zero-area) boxes reach it


def paired_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU [M] and generalised IoU [M] of boxes1[k] with boxes2[k]; both [M, 4] xyxy.

    Equals the diagonal of torchvision's `box_iou` / `generalized_box_iou` without building the
    [M, M] matrices; zero-area denominators are floored at 1e-7 so degenerate boxes stay finite.
    """
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).prod(-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).prod(-1)
    union = area1 + area2 - inter
    iou = inter / union.clamp(min=_AREA_EPS)
    hull = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    hull_area = hull.prod(-1)
    return iou, iou - (hull_area - union) / hull_area.clamp(min=_AREA_EPS)


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training objective: the sum of the (already weighted) named losses."""
    if not losses:
        raise ValueError("no losses to sum")
    return sum(losses.values())


def denoising_indices(
    dn_meta: dict, targets: list[dict[str, torch.Tensor]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed (query_idx, target_idx) per image for the denoising queries: the positive queries
    `dn_meta["dn_positive_idx"][i]` (group-major) pair with targets 0..N_i-1 repeated per group."""
    num_group = dn_meta["dn_num_group"]
    indices = []
    for query_idx, t in zip(dn_meta["dn_positive_idx"], targets):
        target_idx = torch.arange(len(t["labels"]), device=query_idx.device).tile(num_group)
        if len(query_idx) != len(target_idx):
            raise ValueError(
                f"dn_meta has {len(query_idx)} positive queries for an image with {len(t['labels'])} "
                f"targets in {num_group} groups; were the denoising queries built from these targets?"
            )
        indices.append((query_idx.long(), target_idx))
    return indices


class RTDETRCriterion(nn.Module):
    """Named, weighted losses from the model's output dict (see `RTDETRDecoder.forward`).

    Keys: `loss_vfl` (or `loss_focal`), `loss_bbox`, `loss_giou` for the final layer, and the same with
    `_aux_{i}` per `aux_outputs` entry, `_enc` for `enc_outputs`, `_dn_{i}` per `dn_outputs` entry.
    Outputs that are absent produce no losses. Every term is divided by the number of target boxes
    in the batch (averaged over ranks, at least 1); denoising terms also by `dn_num_group`.
    Computed in float32, also under autocast.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_vfl: float = 1.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        loss_types: Sequence[str] = ("vfl", "boxes"),
        alpha: float = 0.75,
        gamma: float = 2.0,
        weight_focal: float = 1.0,
    ):
        super().__init__()
        unknown = [name for name in loss_types if name not in LOSS_TYPES]
        if unknown or not loss_types:
            raise ValueError(
                f"loss_types must be a non-empty subset of {LOSS_TYPES}, got {tuple(loss_types)}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.loss_types = tuple(loss_types)
        self.alpha = alpha
        self.gamma = gamma
        self.weight_dict = {
            "loss_vfl": weight_vfl,
            "loss_focal": weight_focal,
            "loss_bbox": weight_bbox,
            "loss_giou": weight_giou,
        }

    def forward(self, outputs: dict, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """outputs: the model's training dict; targets: per image "labels" [N_i] int64 and "boxes"
        [N_i, 4] normalised cxcywh. Returns scalar float32 losses, already multiplied by their weights."""
        device = outputs["pred_logits"].device
        with torch.autocast(device.type, enabled=False):
            targets = [
                {"labels": t["labels"].to(device), "boxes": t["boxes"].to(device).float()} for t in targets
            ]
            num_boxes = self.num_boxes(targets, device)

            losses = self.layer_losses(outputs, targets, self.matcher(outputs, targets), num_boxes)
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                layer = self.layer_losses(aux, targets, self.matcher(aux, targets), num_boxes)
                losses.update({f"{k}_aux_{i}": v for k, v in layer.items()})
            if "enc_outputs" in outputs:
                enc = outputs["enc_outputs"]
                layer = self.layer_losses(enc, targets, self.matcher(enc, targets), num_boxes)
                losses.update({f"{k}_enc": v for k, v in layer.items()})
            if "dn_outputs" in outputs:
                if "dn_meta" not in outputs:
                    raise KeyError("outputs have 'dn_outputs' but no 'dn_meta'")
                dn_meta = outputs["dn_meta"]
                indices = denoising_indices(dn_meta, targets)
                for i, dn in enumerate(outputs["dn_outputs"]):
                    layer = self.layer_losses(dn, targets, indices, num_boxes * dn_meta["dn_num_group"])
                    losses.update({f"{k}_dn_{i}": v for k, v in layer.items()})
        return losses

    @staticmethod
    def num_boxes(targets: list[dict[str, torch.Tensor]], device: torch.device) -> float:
        """Target boxes in the batch, averaged over ranks when torch.distributed is initialised, >= 1."""
        count = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return count.clamp(min=1).item()

    def layer_losses(
        self,
        outputs: dict,
        targets: list[dict[str, torch.Tensor]],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        num_boxes: float,
    ) -> dict[str, torch.Tensor]:
        """Weighted losses of one {pred_logits [B, Q, C], pred_boxes [B, Q, 4] cxcywh} under the
        per-image (query_idx, target_idx) pairs `indices`, divided by `num_boxes`."""
        logits = outputs["pred_logits"].float()
        boxes = outputs["pred_boxes"].float()
        batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        src_boxes = boxes[batch_idx, query_idx]
        tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        src_xyxy = box_convert(src_boxes, "cxcywh", "xyxy")
        tgt_xyxy = box_convert(tgt_boxes, "cxcywh", "xyxy")

        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, labels] = 1.0
        losses = {}
        if "vfl" in self.loss_types:
            iou, _ = paired_box_iou(src_xyxy.detach(), tgt_xyxy)
            score = torch.zeros_like(logits)
            score[batch_idx, query_idx, labels] = iou
            weight = self.alpha * logits.detach().sigmoid().pow(self.gamma) * (1 - onehot) + score
            bce = F.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction="none")
            losses["loss_vfl"] = bce.sum() / num_boxes  # = original .mean(1).sum() * Q / num_boxes
        if "focal" in self.loss_types:
            focal = sigmoid_focal_loss(logits, onehot, self.alpha, self.gamma, reduction="none")
            losses["loss_focal"] = focal.sum() / num_boxes
        if "boxes" in self.loss_types:
            _, giou = paired_box_iou(src_xyxy, tgt_xyxy)
            losses["loss_bbox"] = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
            losses["loss_giou"] = (1 - giou).sum() / num_boxes
        return {k: v * self.weight_dict[k] for k, v in losses.items()}
