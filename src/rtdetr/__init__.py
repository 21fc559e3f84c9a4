"""RT-DETR object detection driven by TAO-style YAML specs."""

__version__ = "0.1.0"
