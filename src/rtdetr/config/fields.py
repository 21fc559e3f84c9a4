"""`spec_field`: a dataclass field carrying the documentation metadata of one spec key.

The metadata mirrors the columns of TAO's spec reference table (value_type, description,
default_value, valid_min, valid_max, valid_options, automl_enabled). The validator, the JSON Schema
and ``docs/spec_reference.md`` are all generated from it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

MISSING_VALUE = "???"  # a required value the user must fill for the task that reads it

INF = float("inf")


@dataclass(frozen=True)
class FieldInfo:
    """Documentation metadata of one spec field."""

    description: str = ""
    value_type: str | None = None  # as the reference table names it; derived from the type if None
    valid_min: float | None = None
    valid_max: float | None = None
    valid_options: tuple[str, ...] | None = None  # for a list, the options of its items
    automl_enabled: bool = False
    note: str | None = None  # where and why we differ from TAO's documentation


def spec_field(
    default: Any,
    description: str = "",
    *,
    value_type: str | None = None,
    valid_min: float | None = None,
    valid_max: float | None = None,
    valid_options: tuple[str, ...] | list[str] | None = None,
    automl: bool = False,
    note: str | None = None,
) -> Any:
    """A dataclass field with its documentation metadata (mutable defaults are copied per instance)."""
    info = FieldInfo(
        description=description,
        value_type=value_type,
        valid_min=valid_min,
        valid_max=valid_max,
        valid_options=tuple(valid_options) if valid_options is not None else None,
        automl_enabled=automl,
        note=note,
    )
    metadata = {"spec": info}
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_info(f: dataclasses.Field) -> FieldInfo:
    """The metadata of a dataclass field (empty metadata if it has none)."""
    return f.metadata.get("spec", FieldInfo())
