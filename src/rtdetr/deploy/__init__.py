"""Runners of a trained model that evaluate, inference and the Detector API share.

A backend maps a batch of preprocessed images (float32 [B, 3, H, W], RGB in [0, 1]) to the raw
outputs (``pred_logits`` [B, Q, C], ``pred_boxes`` [B, Q, 4] normalised cxcywh) as float32 CPU
tensors, and carries the model's metadata (class names, category ids, input size).
"""

from __future__ import annotations

import os
from pathlib import Path

from rtdetr.deploy.torch_backend import TorchBackend
from rtdetr.errors import UserError

__all__ = ["TorchBackend", "load_backend"]


def load_backend(path: str | os.PathLike, device: str | None = None):
    """The backend for a model file: a checkpoint (``.pth``) runs in PyTorch."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".engine", ".trt", ".plan"):
        raise UserError(f"{path}: running exported models ({suffix}) is not implemented yet in this version")
    return TorchBackend.from_checkpoint(path, device=device)
