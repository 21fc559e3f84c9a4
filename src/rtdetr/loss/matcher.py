"""One-to-one Hungarian matching of predictions to ground truth (focal class cost, L1, GIoU)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

# Inside the logs of the focal class cost, as in the original RT-DETR: bounds the cost of saturated logits.
LOG_EPS = 1e-8


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Class cost [M, N] of predictions with logits [M, C] for targets of class labels [N].

    With p = sigmoid(logit at the target's class):
    alpha * (1 - p)^gamma * -log(p) - (1 - alpha) * p^gamma * -log(1 - p).
    """
    logits = logits[:, labels]
    prob, one_minus_prob = logits.sigmoid(), (-logits).sigmoid()  # sigmoid(-x): 1 - p without cancellation
    pos = alpha * one_minus_prob**gamma * -(prob + LOG_EPS).log()
    neg = (1 - alpha) * prob**gamma * -(one_minus_prob + LOG_EPS).log()
    return pos - neg


class HungarianMatcher(nn.Module):
    """Pairs each image's targets with queries by minimising
    bbox_cost * L1 + class_cost * focal class cost + giou_cost * (-GIoU).

    Each image gets min(Q, N) pairs. Costs that are NaN or infinite (a diverged model) become the
    float32 maximum, so matching still succeeds and the loss, not the matcher, reports the problem.
    """

    def __init__(
        self,
        class_cost: float = 2.0,
        bbox_cost: float = 5.0,
        giou_cost: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        super().__init__()
        if class_cost == bbox_cost == giou_cost == 0:
            raise ValueError("at least one of class_cost, bbox_cost, giou_cost must be non-zero")
        self.class_cost = class_cost
        self.bbox_cost = bbox_cost
        self.giou_cost = giou_cost
        self.alpha = alpha
        self.gamma = gamma

    def cost_matrix(self, outputs: dict, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Float32 cost [B, Q, sum N_i] of every query against every target of the batch (on the outputs' device)."""
        logits = outputs["pred_logits"]
        bs, num_queries = logits.shape[:2]
        with torch.autocast(logits.device.type, enabled=False):
            logits = logits.detach().flatten(0, 1).float()
            boxes = outputs["pred_boxes"].detach().flatten(0, 1).float()
            labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
            tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes)
            cost = (
                self.bbox_cost * torch.cdist(boxes, tgt_boxes, p=1)
                + self.class_cost * focal_class_cost(logits, labels, self.alpha, self.gamma)
                - self.giou_cost
                * generalized_box_iou(
                    box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
                )
            )
        big = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
        return cost.view(bs, num_queries, -1)

    @torch.no_grad()
    def forward(
        self, outputs: dict, targets: list[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """outputs: "pred_logits" [B, Q, C] raw logits, "pred_boxes" [B, Q, 4] normalised cxcywh;
        targets: per image "labels" [N_i] int64 and "boxes" [N_i, 4] normalised cxcywh.

        Returns per image (query_idx, target_idx), int64 [min(Q, N_i)] each on the outputs' device,
        query_idx ascending. Images without targets give two empty tensors.
        """
        device = outputs["pred_logits"].device
        sizes = [len(t["boxes"]) for t in targets]
        cost = self.cost_matrix(outputs, targets).cpu()  # the one device -> host transfer
        indices = []
        for i, block in enumerate(cost.split(sizes, -1)):
            query_idx, target_idx = linear_sum_assignment(block[i].numpy())
            indices.append(
                (
                    torch.as_tensor(query_idx, dtype=torch.int64, device=device),
                    torch.as_tensor(target_idx, dtype=torch.int64, device=device),
                )
            )
        return indices
