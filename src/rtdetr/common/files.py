"""Atomic file writes: a reader sees the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from rtdetr.errors import UserError

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
