"""RT-DETR model: backbones, hybrid encoder, deformable decoder, post-processing."""

from rtdetr.model.backbones import available_backbones, build_backbone, load_pretrained_backbone
from rtdetr.model.factory import build_model
from rtdetr.model.postprocess import PostProcessor, select_detections
from rtdetr.model.rtdetr import RTDETR

__all__ = [
    "RTDETR",
    "PostProcessor",
    "available_backbones",
    "build_backbone",
    "build_model",
    "load_pretrained_backbone",
    "select_detections",
]
