"""`spec_field`: a dataclass field carrying the documentation metadata of one spec key.

The metadata mirrors the columns of TAO's spec reference table (value_type, description,
default_value, valid_min, valid_max, valid_options, automl_enabled), plus this toolkit's practical
bounds (limit_min, limit_max: what a real model reaches and a machine holds, where TAO documents
none or infinity). The validator, the JSON Schema and ``docs/spec_reference.md`` are all generated
from it.
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
    limit_min: float | None = None  # practical bounds enforced besides valid_min/valid_max
    limit_max: float | None = None  # (for a list, the bounds of its items)

    def bounds(self) -> tuple[float | None, float | None]:
        """The enforced (min, max): the tighter of the documented range and the practical limits."""
        low = [b for b in (self.valid_min, self.limit_min) if b is not None]
        high = [b for b in (self.valid_max, self.limit_max) if b is not None]
        return (max(low) if low else None, min(high) if high else None)


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
    limit_min: float | None = None,
    limit_max: float | None = None,
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
        limit_min=limit_min,
        limit_max=limit_max,
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
