"""Hungarian matcher, the RT-DETR set criterion (VFL + L1 + GIoU, auxiliary and denoising terms) and
the distillation criteria (L1, L2, KL, IOU)."""

from rtdetr.loss.criterion import RTDETRCriterion, paired_box_iou, total_loss
from rtdetr.loss.distill import Binding, DistillationLoss
from rtdetr.loss.matcher import HungarianMatcher

__all__ = [
    "Binding",
    "DistillationLoss",
    "HungarianMatcher",
    "RTDETRCriterion",
    "paired_box_iou",
    "total_loss",
]
