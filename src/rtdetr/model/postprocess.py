"""Raw model outputs -> per-image detections (scores, labels, xyxy boxes in original-image pixels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import box_convert


def select_detections(
    logits: torch.Tensor, boxes: torch.Tensor, orig_sizes: torch.Tensor, num_select: int = 300
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top `num_select` (query, class) pairs by sigmoid score; no threshold.

    logits [B, Q, C] raw, boxes [B, Q, 4] normalised cxcywh, orig_sizes [B, 2] as (h, w) ->
    scores [B, K], labels [B, K] int64 (class index = flat index mod C), boxes [B, K, 4] xyxy pixels,
    K = min(num_select, Q * C), sorted by decreasing score.
    """
    num_classes = logits.shape[-1]
    scores, index = torch.topk(
        logits.sigmoid().flatten(1), min(num_select, logits.shape[1] * num_classes), dim=1
    )
    labels = index % num_classes
    query = index // num_classes
    xyxy = box_convert(boxes, "cxcywh", "xyxy")
    xyxy = xyxy.gather(1, query[..., None].expand(-1, -1, 4))
    h, w = orig_sizes.to(xyxy.dtype).unbind(-1)
    return scores, labels, xyxy * torch.stack([w, h, w, h], dim=-1)[:, None]


def detections_per_image(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    canvas_sizes: torch.Tensor,
    orig_sizes: torch.Tensor,
    num_select: int = 300,
    conf: float = 0.0,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image (scores [K], labels [K], boxes [K, 4] xyxy) in original pixels, clipped to the image.

    logits [B, Q, C], boxes [B, Q, 4] normalised cxcywh (relative to ``canvas_sizes`` [B, 2] (h, w) in
    original pixels, see rtdetr.data.transforms), ``orig_sizes`` [B, 2] (h, w). The top ``num_select``
    by score, then those with score >= ``conf``; sorted by decreasing score.
    """
    scores, labels, xyxy = select_detections(logits, boxes, canvas_sizes, num_select)
    out = []
    for s, lab, b, size in zip(scores, labels, xyxy, orig_sizes):
        h, w = (float(v) for v in size)
        b = torch.stack(
            [b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], -1
        )
        if conf > 0:
            keep = s >= conf
            s, lab, b = s[keep], lab[keep], b[keep]
        out.append((s, lab, b))
    return out


class PostProcessor(nn.Module):
    """`forward(outputs, orig_sizes)` -> list (one per image) of {"scores" [K], "labels" [K], "boxes" [K, 4]}.

    outputs: the model's dict with `pred_logits` [B, Q, C] and `pred_boxes` [B, Q, 4] normalised cxcywh.
    orig_sizes: [B, 2] as (h, w) of each original image; boxes come back as xyxy in those pixels.
    category_map: optional label index -> category id (e.g. COCO's 91-id space); labels are remapped.
    """

    def __init__(self, num_select: int = 300, category_map: Sequence[int] | None = None):
        super().__init__()
        self.num_select = num_select
        self.category_map = (
            None if category_map is None else torch.as_tensor(list(category_map), dtype=torch.int64)
        )

    def forward(
        self, outputs: dict[str, torch.Tensor], orig_sizes: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        scores, labels, boxes = select_detections(
            outputs["pred_logits"], outputs["pred_boxes"], orig_sizes, self.num_select
        )
        if self.category_map is not None:
            if len(self.category_map) != outputs["pred_logits"].shape[-1]:
                raise ValueError(
                    f"category_map has {len(self.category_map)} entries for "
                    f"{outputs['pred_logits'].shape[-1]} classes"
                )
            labels = self.category_map.to(labels.device)[labels]
        return [{"scores": s, "labels": lb, "boxes": b} for s, lb, b in zip(scores, labels, boxes)]
