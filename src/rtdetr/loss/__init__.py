"""Hungarian matcher and the RT-DETR set criterion (VFL + L1 + GIoU, auxiliary and denoising terms)."""

from rtdetr.loss.criterion import RTDETRCriterion, paired_box_iou, total_loss
from rtdetr.loss.matcher import HungarianMatcher

__all__ = ["HungarianMatcher", "RTDETRCriterion", "paired_box_iou", "total_loss"]
