"""Atomic file writes: a reader sees the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rtdetr.errors import UserError, abbreviate

# the process umask, read once at import: reading it means setting it, which is not thread-safe
_UMASK = os.umask(0o077)
os.umask(_UMASK)


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO], None], mode: str = "w", fsync: bool = True
) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it over ``path``.

    ``fsync`` also flushes the file to the disk before the rename (survives a power cut, not only a
    killed process); many small outputs can skip it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp makes the file private (0600); give it the mode an ordinary open() would (the
    # replaced file's, else 0666 less the umask), so that e.g. a DeepStream container can read it
    mode_bits = path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            if hasattr(os, "fchmod"):  # POSIX (Windows from Python 3.13, where it sets read-only only)
                os.fchmod(fh.fileno(), mode_bits)
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text), fsync=fsync)


def check_output_file(
    path: str | os.PathLike,
    field: str,
    overwrite: bool,
    overwrite_field: str,
    source: tuple[str | os.PathLike, str] | None = None,
) -> Path:
    """``path`` as a file that may be written, before any work is done: one-line UserError naming
    ``field`` for a folder, a path below a file, an existing file without ``overwrite``, a folder
    that cannot be written, or the task's input file (``source``: its path and field)."""
    path = Path(path)
    if source is not None and path.resolve() == Path(source[0]).resolve():
        raise UserError(f"{field}: the same file as {source[1]}; choose another name")
    if path.is_dir():
        raise UserError(f"{field}: {path} is a folder; give a file path")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"{field}: {path}: {blocking} is a file, not a folder")
    if path.exists() and not overwrite:
        raise UserError(f"{field}: {path} exists; remove it or set {overwrite_field}=true")
    folder = next(p for p in path.absolute().parents if p.exists())  # the one the file goes in, or
    if not os.access(folder, os.W_OK | os.X_OK):  # where its missing folders are created
        raise UserError(f"{field}: {path}: cannot write in {folder} (permission denied or read-only)")
    return path


def torch_load_weights(path: str | os.PathLike, field: str) -> Any:
    """``torch.load`` of a weights file in torch's weights-only mode (no code in the file runs); a
    missing, folder, corrupt or unsafe file is one UserError naming ``field``. torch's advice to
    load with ``weights_only=False`` is left out: it would run code from an untrusted file."""
    import torch

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
        import onnx

        return len(onnx.load(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # protobuf's DecodeError and friends: not ONNX
        return False
