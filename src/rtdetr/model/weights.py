"""Reading weight files safely: torch's weights-only loading (no code in a file runs) with one-line
errors, and telling an ONNX file apart from a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rtdetr.errors import UserError, abbreviate


def torch_load_weights(path: str | os.PathLike, field: str) -> Any:
    """``torch.load`` of a weights file in torch's weights-only mode (no code in the file runs); a
    missing, folder, corrupt or unsafe file is one UserError naming ``field``. torch's advice to
    load with ``weights_only=False`` is left out: it would run code from an untrusted file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{field}: {path}: file not found")
    if path.is_dir():
        raise UserError(f"{field}: {path}: is a folder, expected a weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        if looks_like_onnx(path):
            raise UserError(
                f"{field}: {path}: an ONNX model, not a checkpoint: run it as evaluate.trt_engine / "
                "inference.trt_engine, or with Detector.from_file"
            ) from exc
        raise UserError(f"{field}: {path}: {load_error_reason(exc)}") from exc


def load_error_reason(exc: BaseException) -> str:
    """Why torch could not load a file, in one short clause without torch's unsafe advice."""
    text = str(exc).strip()
    if "Weights only load failed" in text:
        lines = [line.strip() for line in text.splitlines()]
        unsafe = next((line for line in lines if "GLOBAL" in line), None)
        if unsafe is not None:  # a class or function to import: code that would run
            return (
                "holds Python objects besides tensors, which rtdetr does not load (they could run code): "
                + abbreviate(unsafe, 120)
            )
        detail = next((line for line in lines if line.startswith("Unsupported")), "")
        return "not a readable checkpoint (corrupt, or not a torch file)" + (
            f": {abbreviate(detail, 80)}" if detail else ""
        )
    first = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
    return f"not a readable checkpoint (corrupt or truncated): {abbreviate(first, 160)}"


def looks_like_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` parses as an ONNX model with a graph (whatever its suffix)."""
    try:
        import onnx  # only for a file that is no torch checkpoint: onnx is slow to import

        return len(onnx.load(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # protobuf's DecodeError and friends: not ONNX
        return False
