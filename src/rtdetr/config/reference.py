"""What is generated from the schema: the default spec, a JSON Schema, the Markdown reference."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Iterator
from typing import Any

from rtdetr.config.fields import FieldInfo, field_info
from rtdetr.config.loader import spec_to_dict
from rtdetr.config.schema import ExperimentConfig
from rtdetr.config.validate import type_hints, unwrap_optional

SCHEMA_ID = "https://github.com/rtdetr-toolkit/rtdetr/spec.schema.json"


def default_spec() -> dict:
    """The complete default spec as plain data."""
    return spec_to_dict(ExperimentConfig())


def _value_type(tp: Any, info: FieldInfo) -> str:
    if info.value_type:
        return info.value_type
    tp, _ = unwrap_optional(tp)
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return "collection"
    if typing.get_origin(tp) is list:
        return "list"
    return {int: "int", float: "float", bool: "bool", str: "string"}[tp]


def iter_fields(
    cls: type = ExperimentConfig, prefix: str = ""
) -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted path, field, resolved type) for every field, depth first."""
    for f in dataclasses.fields(cls):
        tp = type_hints(cls)[f.name]
        path = f"{prefix}{f.name}"
        yield path, f, tp
        inner, _ = unwrap_optional(tp)
        if dataclasses.is_dataclass(inner):
            yield from iter_fields(inner, path + ".")
        elif typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            yield from iter_fields(typing.get_args(inner)[0], path + "[].")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    else:
        value = f.default_factory()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return value


def automl_fields() -> list[str]:
    """Dotted paths of the fields AutoML may tune (teacher fields excluded)."""
    return [
        path
        for path, f, _ in iter_fields()
        if field_info(f).automl_enabled and not path.startswith("distill.teacher.")
    ]


# ------------------------------------------------------------------------------ JSON Schema
def _json_number(x: float) -> float | None:
    return None if x is None or math.isinf(x) else x


def _schema_for(tp: Any, info: FieldInfo) -> dict:
    inner, optional = unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if dataclasses.is_dataclass(inner):
        node = _object_schema(inner)
    elif origin is list:
        node = {"type": "array", "items": _schema_for(typing.get_args(inner)[0], info)}
    elif origin is dict:
        node = {"type": "object", "additionalProperties": {"type": "string"}}
    else:
        node = {"type": {int: "integer", float: "number", bool: "boolean", str: "string"}[inner]}
        if info.valid_options is not None:
            node["enum"] = list(info.valid_options)
        low, high = info.bounds()  # what the validator enforces: documented range and limits
        if _json_number(low) is not None:
            node["minimum"] = low
        if _json_number(high) is not None:
            node["maximum"] = high
    if optional:
        node = {"anyOf": [node, {"type": "null"}]}
    return node


def _object_schema(cls: type) -> dict:
    props = {}
    for f in dataclasses.fields(cls):
        info = field_info(f)
        tp = type_hints(cls)[f.name]
        node = _schema_for(tp, info)
        if typing.get_origin(unwrap_optional(tp)[0]) is list:
            node.pop("enum", None)  # options of a list apply to its items (set in _schema_for)
        node.update(
            {
                "description": info.description,
                "default": _default(f),
                "x-value-type": _value_type(tp, info),
                "x-valid-min": _json_number(info.valid_min) if info.valid_min is not None else None,
                "x-valid-max": "inf" if info.valid_max == math.inf else info.valid_max,
                "x-valid-options": list(info.valid_options) if info.valid_options else None,
                "x-automl-enabled": info.automl_enabled,
            }
        )
        if info.limit_min is not None:
            node["x-limit-min"] = info.limit_min
        if info.limit_max is not None:
            node["x-limit-max"] = info.limit_max
        if info.note:
            node["x-note"] = info.note
        props[f.name] = node
    return {"type": "object", "additionalProperties": False, "properties": props}


def json_schema() -> dict:
    """A JSON Schema (2020-12) of the spec, with TAO's metadata as ``x-`` keys."""
    schema = _object_schema(ExperimentConfig)
    schema.update(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": SCHEMA_ID,
            "title": "RT-DETR experiment spec",
            "x-automl-enabled-fields": automl_fields(),
        }
    )
    return schema


# ------------------------------------------------------------------------------- Markdown
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple, dict)):
        return "`" + json.dumps(value) + "`"
    return str(value).replace("|", "\\|")


def _limits(info: FieldInfo) -> str:
    """The practical bounds as "min..max" (either side empty when unset)."""
    if info.limit_min is None and info.limit_max is None:
        return ""
    return f"{_cell(info.limit_min)}..{_cell(info.limit_max)}"


def markdown_reference() -> str:
    """The spec reference page, generated from the schema."""
    out = [
        "# Spec reference",
        "",
        "<!-- Generated by `rtdetr get-spec --markdown -o docs/spec_reference.md`; do not edit. -->",
        "",
        "Every field of the experiment spec, with the metadata of TAO's reference documentation.",
        "Nested fields are written with dots (`train.optim.lr`); `[]` marks the items of a list.",
        "A default of `???` is a required value for the task that reads it. Notes mark where this",
        "toolkit deliberately differs from TAO's documentation. `limits` are this toolkit's practical",
        "bounds (for a list, of its items), enforced besides valid_min and valid_max where TAO documents",
        "no bound or infinity: what a real model reaches and a machine holds.",
        "",
        "AutoML-enabled fields: " + ", ".join(f"`{p}`" for p in automl_fields()) + ".",
        "",
    ]
    headings: dict[str, str] = {"(top level)": ""}  # section path -> its description
    rows: dict[str, list[str]] = {"(top level)": []}  # section path -> its table rows, in order
    for path, f, tp in iter_fields():
        if path.startswith("distill.teacher."):
            continue  # the teacher is a model section, documented under `model`
        info = field_info(f)
        is_section = dataclasses.is_dataclass(unwrap_optional(tp)[0]) and path != "distill.teacher"
        if is_section:
            headings[path] = info.description
            rows.setdefault(path, [])
            continue
        if typing.get_origin(unwrap_optional(tp)[0]) is list:
            headings.setdefault(path + "[]", info.description)
        parent = path.rsplit(".", 1)[0] if "." in path else "(top level)"
        description = info.description + (f" **Note:** {info.note}" if info.note else "")
        default = "(a model section, see `model`)" if path == "distill.teacher" else _default(f)
        row = [
            f"`{path}`",
            _value_type(tp, info),
            _cell(default),
            _cell(info.valid_min),
            _cell(info.valid_max),
            _limits(info),
            ", ".join(info.valid_options) if info.valid_options else "",
            "yes" if info.automl_enabled else "",
            _cell(description),
        ]
        rows.setdefault(parent, []).append("| " + " | ".join(row) + " |")
    for section, lines in rows.items():
        if not lines:
            continue
        out += ["", f"## {section}", ""]
        if headings.get(section):
            out += [headings[section], ""]
        out += [
            "| field | value_type | default | valid_min | valid_max | limits | valid_options | automl "
            "| description |",
            "|---|---|---|---|---|---|---|---|---|",
            *lines,
        ]
    return "\n".join(out) + "\n"
