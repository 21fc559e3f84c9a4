"""The TensorRT pieces that the engine builder (gen_trt_engine) and the engine runtime share: loading
TensorRT, its logger, and the metadata file written beside an engine."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from rtdetr.common.files import atomic_write_text
from rtdetr.errors import UserError
from rtdetr.model.checkpoint import ModelMetadata

ENGINE_SUFFIXES = (".engine", ".trt", ".plan")
INPUT_NAME = "inputs"
INSTALL_HINT = "install the tensorrt extra (pip install 'rtdetr[tensorrt]') on a machine with an NVIDIA GPU"


def require_tensorrt(purpose: str = "gen_trt_engine"):
    """The ``tensorrt`` module; a one-line UserError when TensorRT or a CUDA GPU is missing.

    ``purpose`` starts the message ("gen_trt_engine needs TensorRT and a CUDA GPU ...").
    """
    problems = []
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
        problems.append("TensorRT is not installed")
    except OSError as exc:  # the wheel is there but its libraries do not load
        trt = None
        problems.append(f"TensorRT does not load: {str(exc).splitlines()[0]}")
    if not torch.cuda.is_available():
        problems.append("PyTorch sees no CUDA GPU")
    if problems:
        raise UserError(f"{purpose} needs TensorRT and a CUDA GPU ({' and '.join(problems)}): {INSTALL_HINT}")
    return trt


def make_logger(trt, verbose: bool = False):
    """A TensorRT logger that forwards to Python's logging: errors and warnings always, TensorRT's
    info and verbose messages as DEBUG (as INFO with ``verbose``)."""
    severity = trt.ILogger.Severity
    chatty = logging.INFO if verbose else logging.DEBUG
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: chatty,
        severity.VERBOSE: chatty,
    }
    trt_log = logging.getLogger("rtdetr.tensorrt")

    class LoggingBridge(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, level, msg):
            trt_log.log(levels.get(level, logging.INFO), "TensorRT: %s", msg)

    return LoggingBridge()


def engine_metadata_path(engine_path: str | os.PathLike) -> Path:
    """``<engine path>.json``: the model's metadata and build settings beside an engine."""
    return Path(f"{engine_path}.json")


def write_engine_metadata(
    engine_path: str | os.PathLike, meta: ModelMetadata, export_info: dict, build_info: dict
) -> Path:
    """Write ``<engine>.json``: the ONNX file's rtdetr metadata, its "export" settings and "tensorrt"."""
    data = {**meta.to_dict(), "export": export_info, "tensorrt": build_info}
    return atomic_write_text(engine_metadata_path(engine_path), json.dumps(data, indent=2) + "\n")


def read_engine_metadata(engine_path: str | os.PathLike) -> tuple[ModelMetadata, dict]:
    """(ModelMetadata, {"export": ..., "tensorrt": ...}) from ``<engine>.json``; UserError if absent."""
    path = engine_metadata_path(engine_path)
    if not path.is_file():
        raise UserError(
            f"{engine_path}: {path.name} is missing beside the engine: it holds the model's class names and "
            "input size; `rtdetr gen_trt_engine` writes it, copy it along with the engine"
        )
    try:
        data = json.loads(path.read_text())
        meta = ModelMetadata.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a readable engine metadata file: {exc}") from exc
    return meta, {"export": data.get("export", {}), "tensorrt": data.get("tensorrt", {})}
