"""RT-DETR object detection driven by TAO-style YAML specs."""

from rtdetr.config import load_spec

__version__ = "0.1.0"

__all__ = ["Detections", "Detector", "__version__", "load_model", "load_spec"]


def __getattr__(name: str):
    # torch-heavy parts are imported on first use, so that `rtdetr --help` stays quick
    if name == "load_model":
        from rtdetr.model.checkpoint import load_model

        return load_model
    if name in ("Detector", "Detections"):
        from rtdetr.deploy import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'rtdetr' has no attribute {name!r}")
