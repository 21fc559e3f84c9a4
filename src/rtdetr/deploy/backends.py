"""The runner of a model file: PyTorch for a checkpoint, ONNX Runtime for an ONNX file, TensorRT for an
engine; each maps preprocessed images (float32 [B, 3, H, W], RGB in [0, 1]) to the raw outputs
(``pred_logits`` [B, Q, C], ``pred_boxes`` [B, Q, 4] normalised cxcywh) as float32 CPU tensors, and
carries the model's metadata (class names, category ids, input size)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from rtdetr.deploy.onnx_backend import OnnxBackend
from rtdetr.deploy.tensorrt_backend import TensorRTBackend
from rtdetr.deploy.tensorrt_common import ENGINE_SUFFIXES
from rtdetr.deploy.torch_backend import TorchBackend
from rtdetr.model.weights import looks_like_onnx

__all__ = ["OnnxBackend", "TensorRTBackend", "TorchBackend", "load_backend"]


def load_backend(path: str | os.PathLike, device: str | None = None):
    """The backend for a model file: ``.onnx`` runs in ONNX Runtime (CUDA when available, else the
    CPU), ``.engine`` (``.trt``, ``.plan``) in TensorRT, anything else as a checkpoint in PyTorch (or in ONNX
    Runtime when it is an ONNX file after all)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx" or (
        suffix not in ENGINE_SUFFIXES
        and path.is_file()
        and not zipfile.is_zipfile(path)
        and looks_like_onnx(path)
    ):  # an ONNX file under another name runs as one
        return OnnxBackend(path, device=device)
    if suffix in ENGINE_SUFFIXES:
        return TensorRTBackend(path, device=device)
    return TorchBackend.from_checkpoint(path, device=device)
