"""The runner of a model file: PyTorch for a checkpoint, ONNX Runtime or OpenVINO for an ONNX file,
OpenVINO for an IR (``.xml``), TensorRT for an engine; each maps preprocessed images (float32 [B, 3, H, W], RGB in [0, 1]) to the raw outputs
(``pred_logits`` [B, Q, C], ``pred_boxes`` [B, Q, 4] normalised cxcywh) as float32 CPU tensors, and
carries the model's metadata (class names, category ids, input size)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from rtdetr.deploy.onnx_backend import OnnxBackend
from rtdetr.deploy.openvino_backend import OpenVinoBackend, import_openvino, is_ir, openvino_installed
from rtdetr.deploy.tensorrt_backend import TensorRTBackend
from rtdetr.deploy.tensorrt_common import ENGINE_SUFFIXES
from rtdetr.deploy.torch_backend import TorchBackend
from rtdetr.errors import UserError
from rtdetr.model.weights import looks_like_onnx

__all__ = ["OnnxBackend", "OpenVinoBackend", "RUNTIMES", "TensorRTBackend", "TorchBackend", "load_backend"]

RUNTIMES = ("auto", "onnxruntime", "openvino")  # for ONNX files


def onnx_runtime_for(device: str | None, runtime: str = "auto") -> str:
    """The runtime of an ONNX file: ``auto`` is OpenVINO when it is installed and the model runs on
    the CPU (in float32 0.90-0.99x of ONNX Runtime's latency on an AVX-512 EPYC, docs/benchmarks.md),
    else ONNX Runtime (also for CUDA). ``openvino`` without OpenVINO installed is one line saying how
    to install it."""
    if runtime not in RUNTIMES:
        raise UserError(f"runtime {runtime!r}: give one of {', '.join(RUNTIMES)}")
    if runtime == "openvino":
        import_openvino("runtime openvino")
        return runtime
    if runtime == "onnxruntime":
        return runtime
    on_cpu = (device is None and not torch.cuda.is_available()) or str(device).split(":")[0] == "cpu"
    return "openvino" if on_cpu and openvino_installed() else "onnxruntime"


def load_backend(path: str | os.PathLike, device: str | None = None, runtime: str = "auto"):
    """The backend for a model file: ``.onnx`` runs in the ``runtime`` of :func:`onnx_runtime_for`
    (ONNX Runtime with CUDA when available, or OpenVINO on the CPU), ``.xml`` (an OpenVINO IR) in
    OpenVINO, ``.engine`` (``.trt``, ``.plan``) in TensorRT, anything else as a checkpoint in
    PyTorch (or as an ONNX file when it is one after all)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if is_ir(path):
        return OpenVinoBackend(path, device=device)
    if suffix == ".onnx" or (
        suffix not in ENGINE_SUFFIXES
        and path.is_file()
        and not zipfile.is_zipfile(path)
        and looks_like_onnx(path)
    ):  # an ONNX file under another name runs as one
        if onnx_runtime_for(device, runtime) == "openvino":
            return OpenVinoBackend(path, device=device)
        return OnnxBackend(path, device=device)
    if suffix in ENGINE_SUFFIXES:
        return TensorRTBackend(path, device=device)
    return TorchBackend.from_checkpoint(path, device=device)
