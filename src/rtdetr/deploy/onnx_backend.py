"""The ONNX Runtime backend: an exported model (``rtdetr export``, or its INT8 ``rtdetr quantize``)."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from rtdetr.deploy.export import inspect_onnx
from rtdetr.deploy.torch_backend import resolve_device
from rtdetr.errors import UserError

log = logging.getLogger(__name__)


def _providers(device: str | None) -> list:
    """ONNX Runtime's providers for ``device``: None uses CUDA when ONNX Runtime and torch see a GPU."""
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device is None:
        device = "cuda" if has_cuda and torch.cuda.is_available() else "cpu"
    chosen = resolve_device(device)
    if chosen.type == "cpu":
        return ["CPUExecutionProvider"]
    if not has_cuda:
        raise UserError(
            f"device {device}: ONNX Runtime here has no CUDA provider (install onnxruntime-gpu); use cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": chosen.index or 0}), "CPUExecutionProvider"]


def cpu_has_vnni() -> bool | None:
    """Whether this x86 Linux CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI), by its
    /proc/cpuinfo flags; None when unknown (another architecture, or no flags to read)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None
    )
    return None if flags is None else bool({"avx512_vnni", "avx_vnni"} & set(flags))


def x86_without_vnni() -> bool:
    """True on an x86 CPU known to lack VNNI: ONNX Runtime's int8 kernels there multiply with
    VPMADDUBSW, whose 16-bit sums saturate with full 8-bit weights."""
    return cpu_has_vnni() is False


class OnnxBackend:
    """``backend(images)`` -> (pred_logits, pred_boxes) float32 CPU tensors, run by ONNX Runtime.

    ``input_size`` is the (height, width) the file was exported for; ``batch_size`` its fixed batch
    (None when dynamic: any batch runs; otherwise batches are split or padded to it).
    """

    def __init__(self, path: str | os.PathLike, device: str | None = None, threads: int | None = None):
        self.path = Path(path)
        info = inspect_onnx(self.path)
        self.metadata, self.export_info = info.metadata, info.export_info
        check_raw_outputs(self.path, self.export_info)
        quantization = self.export_info.get("quantization")
        if quantization and not quantization.get("reduce_range", False) and x86_without_vnni():
            log.warning(
                "%s: quantized with 8-bit weights, which ONNX Runtime's int8 kernels saturate on this CPU "
                "(no VNNI): expect wrong detections; quantize again with quantize.reduce_range=true",
                self.path,
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_providers(device))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"{self.path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0]}") from exc
        self.batch_size, self.input_size = info.batch, info.input_size
        self.name = f"onnxruntime ({self.session.get_providers()[0]})"

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return run_in_batches(
            lambda array: self.session.run(["pred_logits", "pred_boxes"], {"inputs": array}),
            images,
            self.batch_size,
        )


def check_raw_outputs(path: Path, export_info: dict) -> None:
    """UserError for an end-to-end export: the runtimes' backends give the raw outputs."""
    if export_info.get("end_to_end"):
        raise UserError(
            f"{path}: an end-to-end export (postprocess inside); evaluate, inference and the "
            "Detector run the raw outputs: export again without export.end_to_end"
        )


def run_in_batches(run, images: torch.Tensor, batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``run`` (float32 array [B, 3, H, W] -> (logits, boxes) arrays) over ``images``: at once when the
    model's batch is dynamic (None) or equal, else in chunks of ``batch_size``, the last one padded
    with copies of its last image (their outputs dropped)."""
    array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
    if batch_size is None or len(array) == batch_size:
        logits, boxes = run(array)
        return torch.from_numpy(np.asarray(logits)), torch.from_numpy(np.asarray(boxes))
    parts = []
    for start in range(0, len(array), batch_size):
        chunk = array[start : start + batch_size]
        count = len(chunk)
        if count < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - count, 0)])
        logits, boxes = run(chunk)
        parts.append((np.asarray(logits)[:count], np.asarray(boxes)[:count]))
    return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
            torch.from_numpy(np.concatenate([p[1] for p in parts])))  # fmt: skip
