"""Class-name files: one name per line; line i names logit index i."""

from __future__ import annotations

import os
from pathlib import Path

from rtdetr.errors import UserError


def read_classmap(path: str | os.PathLike) -> list[str]:
    """The class names of a classmap file (blank lines at the end ignored)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise UserError(f"{path}: classmap file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read classmap file: {exc}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        raise UserError(f"{path}: classmap file is empty")
    if any(not name for name in names):
        raise UserError(f"{path}:{names.index('') + 1}: empty class name")
    return names
