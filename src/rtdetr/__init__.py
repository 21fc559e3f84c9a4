"""RT-DETR object detection driven by TAO-style YAML specs."""

from rtdetr.config import load_spec

__version__ = "0.1.0"

__all__ = ["__version__", "load_spec"]
