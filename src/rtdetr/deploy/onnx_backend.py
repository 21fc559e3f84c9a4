"""The ONNX Runtime backend: an exported model (``rtdetr export``, or its INT8 ``rtdetr quantize``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from rtdetr.errors import UserError

log = logging.getLogger(__name__)


def _providers(device: str | None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wants_cuda = device is None or str(device).startswith("cuda")
    if wants_cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device is not None and str(device).startswith("cuda"):
        raise UserError(
            f"device {device}: ONNX Runtime here has no CUDA provider (install onnxruntime-gpu); use cpu"
        )
    return ["CPUExecutionProvider"]


class OnnxBackend:
    """``backend(images)`` -> (pred_logits, pred_boxes) float32 CPU tensors, run by ONNX Runtime.

    ``input_size`` is the (height, width) the file was exported for; ``batch_size`` its fixed batch
    (None when dynamic: any batch runs; otherwise batches are split or padded to it).
    """

    def __init__(self, path: str | os.PathLike, device: str | None = None, threads: int | None = None):
        import onnxruntime as ort

        from rtdetr.export import read_onnx_metadata

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: ONNX file not found")
        try:
            self.metadata, self.export_info = read_onnx_metadata(self.path)
        except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
            if isinstance(exc, UserError):
                raise
            raise UserError(f"{self.path}: not a readable ONNX file: {exc}") from exc
        if self.export_info.get("end_to_end"):
            raise UserError(
                f"{self.path}: an end-to-end export (postprocess inside); evaluate, inference and the "
                "Detector run the raw outputs: export again without export.end_to_end"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_providers(device))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"{self.path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0]}") from exc
        shape = self.session.get_inputs()[0].shape  # [B, 3, H, W]; str entries are dynamic axes
        self.batch_size = shape[0] if isinstance(shape[0], int) else None
        self.input_size = (shape[2], shape[3]) if all(isinstance(v, int) for v in shape[2:]) else None
        self.name = f"onnxruntime ({self.session.get_providers()[0]})"

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        if self.batch_size is None or len(array) == self.batch_size:
            logits, boxes = self.session.run(["pred_logits", "pred_boxes"], {"inputs": array})
            return torch.from_numpy(logits), torch.from_numpy(boxes)
        parts = []
        for start in range(0, len(array), self.batch_size):
            chunk = array[start : start + self.batch_size]
            count = len(chunk)
            if count < self.batch_size:  # pad the last chunk to the fixed batch with copies
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - count, 0)])
            logits, boxes = self.session.run(["pred_logits", "pred_boxes"], {"inputs": chunk})
            parts.append((logits[:count], boxes[:count]))
        return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts])))  # fmt: skip
