"""Contrastive denoising queries (DN-DETR / DINO, as in RT-DETR) built from the ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_convert


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x floored at `eps`."""
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


@dataclass
class DenoisingGroup:
    """Denoising inputs for the decoder, placed before the matching queries.

    embeds [B, N_dn, C] noised-label embeddings; ref_unact [B, N_dn, 4] inverse-sigmoid of noised
    cxcywh boxes; attn_mask [N_dn + Q, N_dn + Q] bool, True = may not attend; meta as described in
    `RTDETRDecoder.forward` (dn_positive_idx, dn_num_group, dn_num_split).
    """

    embeds: torch.Tensor
    ref_unact: torch.Tensor
    attn_mask: torch.Tensor
    meta: dict


def contrastive_denoising_group(
    targets: list[dict[str, torch.Tensor]],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
) -> DenoisingGroup | None:
    """Noised copies of each image's ground truth, in `num_denoising // max_gt` groups (at least 1).

    Each group holds max_gt positive then max_gt negative queries (images with fewer boxes are padded
    with the padding class). Labels flip to a random class with probability label_noise_ratio / 2.
    Boxes (xyxy) move by sign * u * wh/2 * box_noise_scale with u in [0, 1) for positives and [1, 2)
    for negatives. `targets[i]` has "labels" [N_i] int64 and "boxes" [N_i, 4] normalised cxcywh.
    Returns None when there is nothing to denoise.
    """
    if num_denoising <= 0:
        return None
    num_gts = [len(t["labels"]) for t in targets]
    max_gt = max(num_gts, default=0)
    if max_gt == 0:
        return None
    device = targets[0]["boxes"].device
    num_group = max(num_denoising // max_gt, 1)
    bs = len(targets)

    labels = torch.full([bs, max_gt], num_classes, dtype=torch.int64, device=device)
    boxes = torch.zeros([bs, max_gt, 4], device=device)
    pad_mask = torch.zeros([bs, max_gt], dtype=torch.bool, device=device)
    for i, (t, n) in enumerate(zip(targets, num_gts)):
        labels[i, :n] = t["labels"]
        boxes[i, :n] = t["boxes"].to(boxes.dtype)
        pad_mask[i, :n] = True
    labels = labels.tile([1, 2 * num_group])
    boxes = boxes.tile([1, 2 * num_group, 1])
    pad_mask = pad_mask.tile([1, 2 * num_group])
    negative = torch.zeros([bs, 2 * max_gt, 1], device=device)
    negative[:, max_gt:] = 1
    negative = negative.tile([1, num_group, 1])
    positive = (1 - negative).squeeze(-1) * pad_mask
    dn_positive_idx = torch.nonzero(positive)[:, 1].split([n * num_group for n in num_gts])
    num_dn = 2 * max_gt * num_group

    if label_noise_ratio > 0:
        flip = torch.rand(labels.shape, device=device) < label_noise_ratio * 0.5
        random_labels = torch.randint_like(labels, 0, num_classes)
        labels = torch.where(flip & pad_mask, random_labels, labels)

    if box_noise_scale > 0:
        xyxy = box_convert(boxes, "cxcywh", "xyxy")
        diff = boxes[..., 2:].tile([1, 1, 2]) * 0.5 * box_noise_scale
        sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
        magnitude = torch.rand_like(boxes) + negative
        xyxy = (xyxy + sign * magnitude * diff).clip(min=0.0, max=1.0)
        boxes = box_convert(xyxy, "xyxy", "cxcywh")
    ref_unact = inverse_sigmoid(boxes)

    size = num_dn + num_queries
    attn_mask = torch.zeros([size, size], dtype=torch.bool, device=device)
    attn_mask[num_dn:, :num_dn] = True  # matching queries cannot see the denoising ones
    for g in range(num_group):  # groups cannot see each other
        start, end = 2 * max_gt * g, 2 * max_gt * (g + 1)
        attn_mask[start:end, :start] = True
        attn_mask[start:end, end:num_dn] = True

    meta = {
        "dn_positive_idx": dn_positive_idx,
        "dn_num_group": num_group,
        "dn_num_split": [num_dn, num_queries],
    }
    return DenoisingGroup(class_embed(labels), ref_unact, attn_mask, meta)
