"""Values of nested mappings (a spec as plain data) by dotted path, e.g. ``train.optim.lr``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def get_path(data: Mapping, dotted: str, default: Any = None) -> Any:
    """The value at ``dotted``, or ``default`` when a key on the way is missing."""
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def set_path(data: dict, dotted: str, value: Any) -> None:
    """Set the value at ``dotted``, making the mappings on the way (replacing what is not one)."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
