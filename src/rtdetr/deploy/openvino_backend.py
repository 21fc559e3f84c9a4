"""The OpenVINO backend: an exported ONNX file (``rtdetr export``) or an OpenVINO IR (``.xml`` + ``.bin``,
``rtdetr quantize`` with ``quantize.backend: openvino``) on the CPU.

OpenVINO is an extra (``pip install 'rtdetr[openvino]'``); it is imported only when a model runs
through it. The IR carries the same rtdetr metadata as our ONNX files, in its runtime info under
``rtdetr``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from rtdetr.deploy.export import METADATA_KEY, OnnxModelInfo, inspect_onnx
from rtdetr.deploy.onnx_backend import check_raw_outputs, run_in_batches
from rtdetr.errors import UserError
from rtdetr.model.checkpoint import ModelMetadata

log = logging.getLogger(__name__)

INSTALL = "pip install 'rtdetr[openvino]' (OpenVINO and NNCF, Apache-2.0)"
IR_SUFFIX = ".xml"
RT_INFO_KEY = METADATA_KEY  # the IR's runtime info entry holding the metadata JSON


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def import_openvino(why: str):
    """The ``openvino`` module; UserError naming ``why`` it was wanted and how to install it."""
    if not openvino_installed():
        raise UserError(f"{why}: OpenVINO is not installed: {INSTALL}")
    import openvino

    return openvino


def _ir_metadata(model, where: str) -> dict:
    try:
        text = model.get_rt_info([RT_INFO_KEY]).astype(str)
    except Exception as exc:  # OpenVINO raises RuntimeError or its own types for a missing key
        raise UserError(
            f"{where}: an OpenVINO IR without rtdetr metadata; write it with `rtdetr quantize`"
        ) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserError(f"{where}: its rtdetr metadata is damaged: {exc}") from exc


def _static(dim) -> int | None:
    return None if dim.is_dynamic else int(dim.get_length())


def inspect_ir(model, where: str) -> OnnxModelInfo:
    """The metadata and input shape of an OpenVINO model read from an IR of ours."""
    data = _ir_metadata(model, where)
    try:
        meta = ModelMetadata.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: its rtdetr metadata is damaged: {exc}") from exc
    names = [next(iter(i.get_names()), "") for i in model.inputs]
    if "inputs" not in names:
        raise UserError(f"{where}: no input named 'inputs' (inputs: {', '.join(names)})")
    shape = model.input("inputs").get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4:
        raise UserError(f"{where}: input 'inputs' must be [B, 3, H, W], got {shape}")
    dims = [_static(d) for d in shape]
    size = (dims[2], dims[3]) if dims[2] and dims[3] else None
    return OnnxModelInfo(meta, data.get("export", {}), dims[0], size)


def is_ir(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == IR_SUFFIX


def read_model(path: str | os.PathLike, where: str = ""):
    """(the OpenVINO model, its OnnxModelInfo) of one of our ONNX files or IRs; one-line UserError."""
    path = Path(path)
    label = f"{where}: {path}" if where else str(path)
    ov = import_openvino(label)
    if is_ir(path):
        if not path.is_file():
            raise UserError(f"{label}: OpenVINO IR not found")
        if not path.with_suffix(".bin").is_file():
            raise UserError(f"{label}: its weights file {path.with_suffix('.bin').name} is missing beside it")
        info = None
    else:
        info = inspect_onnx(path, where)
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:  # OpenVINO's own exception types
        raise UserError(f"{label}: OpenVINO cannot read it: {str(exc).strip().splitlines()[0]}") from exc
    return model, info or inspect_ir(model, label)


class OpenVinoBackend:
    """``backend(images)`` -> (pred_logits, pred_boxes) float32 CPU tensors, run by OpenVINO on the CPU.

    ``input_size`` is the (height, width) the file was exported for; ``batch_size`` its fixed batch
    (None when dynamic: any batch runs; otherwise batches are split or padded to it). Float models
    run in float32 (OpenVINO would otherwise pick bf16 on CPUs that have it).
    """

    def __init__(self, path: str | os.PathLike, device: str | None = None, threads: int | None = None):
        self.path = Path(path)
        if device is not None and str(device).split(":")[0] != "cpu":
            raise UserError(
                f"device {device}: rtdetr runs OpenVINO on the CPU; use cpu, or ONNX Runtime for CUDA"
            )
        model, info = read_model(self.path)
        self.metadata, self.export_info = info.metadata, info.export_info
        check_raw_outputs(self.path, self.export_info)
        ov = import_openvino(str(self.path))
        config = {
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        try:
            self.compiled = ov.Core().compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO's own exception types
            raise UserError(
                f"{self.path}: OpenVINO cannot compile it: {str(exc).strip().splitlines()[0]}"
            ) from exc
        self.request = self.compiled.create_infer_request()
        self.outputs = {next(iter(o.get_names()), ""): o for o in self.compiled.outputs}
        missing = {"pred_logits", "pred_boxes"} - set(self.outputs)
        if missing:
            raise UserError(f"{self.path}: no output named {sorted(missing)[0]}")
        self.batch_size, self.input_size = info.batch, info.input_size
        self.name = f"openvino {ov.get_version().split('-')[0]} (CPU)"

    def _run(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer({"inputs": array})
        return (np.array(result[self.outputs["pred_logits"]], dtype=np.float32),
                np.array(result[self.outputs["pred_boxes"]], dtype=np.float32))  # fmt: skip

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return run_in_batches(self._run, images, self.batch_size)
