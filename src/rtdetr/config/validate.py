"""Build the typed spec from plain data, collecting every problem instead of stopping at the first."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from rtdetr.config.fields import FieldInfo, field_info
from rtdetr.errors import abbreviate

MAX_ITEM_PROBLEMS = 3  # bad items of one list reported one by one; the rest in one line
MAX_EXACT_INT = 2**53  # a float above this is not an exact integer: refused for an int field


@dataclass(frozen=True)
class Problem:
    """One problem of a spec: the dotted path of the field and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a spec dataclass."""
    return typing.get_type_hints(cls)


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for ``X | None``; (tp, False) otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    """A short readable name of a field type, for messages."""
    tp, optional = unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is list:
        name = f"list of {type_name(typing.get_args(tp)[0])}"
    elif origin is dict or dataclasses.is_dataclass(tp):
        name = "mapping"
    else:
        name = {int: "int", float: "float", bool: "bool", str: "string"}.get(tp, str(tp))
    return f"{name} or null" if optional else name


def schema_paths(cls: type, prefix: str = "") -> Iterator[str]:
    """Every dotted field path below a dataclass (lists of sections as ``name[]``)."""
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        yield path
        tp, _ = unwrap_optional(type_hints(cls)[f.name])
        if dataclasses.is_dataclass(tp):
            yield from schema_paths(tp, path + ".")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield from schema_paths(typing.get_args(tp)[0], path + "[].")


class SpecBuilder:
    """Turns a plain mapping into a dataclass tree; ``problems`` collects what is wrong.

    A bad value is reported and replaced by the field's default, so that one pass finds every
    problem; ``bad_paths`` lets later cross-field rules skip fields that were already reported.
    """

    def __init__(self, root: type):
        self.root = root
        self.problems: list[Problem] = []
        self.bad_paths: set[str] = set()
        self._all_paths = [p.replace("[]", "") for p in schema_paths(root)]

    def build(self, raw: Any) -> Any:
        return self._section(self.root, raw, "")

    # ------------------------------------------------------------------------------ reporting
    def _fail(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))
        self.bad_paths.add(path)

    def _suggest(self, key: str, siblings: list[str], prefix: str) -> str:
        if len(key) > 100:
            return ""  # no field name is that long
        # The key may belong to another section (e.g. num_epochs under model).
        elsewhere = [p for p in self._all_paths if p.rsplit(".", 1)[-1] == key]
        if elsewhere:
            return elsewhere[0]
        close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
        if close:
            return f"{prefix}{close[0]}"
        close = difflib.get_close_matches(key, [p.rsplit(".", 1)[-1] for p in self._all_paths], n=1)
        if close:
            return next(p for p in self._all_paths if p.rsplit(".", 1)[-1] == close[0])
        return ""

    # ------------------------------------------------------------------------------- building
    def _section(self, cls: type, raw: Any, path: str) -> Any:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            self._fail(path, f"expected a mapping (section), got {_describe(raw)}")
            return cls()
        names = [f.name for f in dataclasses.fields(cls)]
        prefix = f"{path}." if path else ""
        for key in raw:
            if key not in names:
                hint = self._suggest(_text(key), names, prefix)
                did_you_mean = f" (did you mean '{hint}'?)" if hint else ""
                self._fail(f"{prefix}{abbreviate(_text(key))}", f"unknown key{did_you_mean}")
        values = {}
        hints = type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in raw:
                fpath = f"{prefix}{f.name}"
                value = self._value(hints[f.name], raw[f.name], fpath, field_info(f))
                if value is not _BAD:
                    values[f.name] = value
        return cls(**values)

    def _value(self, tp: Any, value: Any, path: str, info: FieldInfo) -> Any:
        inner, optional = unwrap_optional(tp)
        if value is None:
            if optional:
                return None
            if dataclasses.is_dataclass(inner):
                return inner()
            self._fail(path, f"expected {type_name(tp)}, got null")
            return _BAD
        origin = typing.get_origin(inner)
        if dataclasses.is_dataclass(inner):
            return self._section(inner, value, path)
        if origin is list:
            return self._list(typing.get_args(inner)[0], value, path, info)
        if origin is dict:
            return self._mapping(typing.get_args(inner)[1], value, path)
        return self._scalar(inner, value, path, info)

    def _list(self, item_tp: Any, value: Any, path: str, info: FieldInfo) -> Any:
        if isinstance(value, (str, Mapping)) and (item_tp is str or dataclasses.is_dataclass(item_tp)):
            value = [value]  # a single folder or data source stands for a list of one
        if not isinstance(value, (list, tuple)):
            self._fail(path, f"expected a list, got {_describe(value)}")
            return _BAD
        items = []
        bad_items = 0
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            if dataclasses.is_dataclass(item_tp):
                items.append(self._section(item_tp, item, item_path))
                continue
            before = len(self.problems)
            converted = self._scalar(item_tp, item, item_path, info)
            if converted is _BAD:
                self.bad_paths.add(path)
                bad_items += 1
                if bad_items > MAX_ITEM_PROBLEMS:
                    del self.problems[before:]  # counted in one line below
            else:
                items.append(converted)
        if bad_items > MAX_ITEM_PROBLEMS:
            self.problems.append(Problem(path, f"{bad_items - MAX_ITEM_PROBLEMS} more bad items"))
        return items

    def _mapping(self, value_tp: Any, value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            self._fail(path, f"expected a mapping, got {_describe(value)}")
            return _BAD
        out = {}
        for k, v in value.items():
            converted = self._scalar(value_tp, v, f"{path}.{abbreviate(_text(k))}", FieldInfo())
            if converted is not _BAD:
                out[_text(k)] = converted
        return out

    def _scalar(self, tp: Any, value: Any, path: str, info: FieldInfo) -> Any:
        converted = _convert(tp, value)
        if converted is _BAD:
            self._fail(path, f"expected {type_name(tp)}, got {_describe(value)}")
            return _BAD
        if isinstance(converted, float) and not math.isfinite(converted):
            self._fail(path, f"value {_describe(value)} is not a finite number")
            return _BAD
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            shown = _describe(converted)
            if info.valid_min is not None and converted < info.valid_min:
                self._fail(path, f"value {shown} is below valid_min {_num(info.valid_min)}")
                return _BAD
            if info.valid_max is not None and converted > info.valid_max:
                self._fail(path, f"value {shown} is above valid_max {_num(info.valid_max)}")
                return _BAD
            if info.limit_min is not None and converted < info.limit_min:
                self._fail(path, f"value {shown} is below this toolkit's limit {_num(info.limit_min)}")
                return _BAD
            if info.limit_max is not None and converted > info.limit_max:
                self._fail(path, f"value {shown} is above this toolkit's limit {_num(info.limit_max)}")
                return _BAD
        if info.valid_options is not None and isinstance(converted, str):
            canonical = {o.lower(): o for o in info.valid_options}
            if converted.lower() not in canonical:
                options = _options(converted, info.valid_options)
                self._fail(path, f"value {_describe(converted)} is not one of the valid_options: {options}")
                return _BAD
            converted = canonical[converted.lower()]
        return converted


_BAD = object()  # marks a value that could not be converted (already reported)


# a decimal number in ASCII, as YAML 1.1 leaves some of them strings ("1e-4"); not "nan" or "inf"
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", re.ASCII)


def _convert(tp: Any, value: Any) -> Any:
    """``value`` as type ``tp``, or _BAD. Lenient only where YAML itself is ambiguous."""
    if tp is bool:
        return value if isinstance(value, bool) else _BAD
    if isinstance(value, bool):
        return _BAD
    if tp is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_INT:
            return int(value)
        return _BAD
    if tp is float:
        if isinstance(value, str):
            if len(value) > 100 or not _NUMBER.fullmatch(value.strip()):
                return _BAD
            value = float(value)  # may be inf ("1e999"): refused by the caller
        if isinstance(value, int):
            try:
                return float(value)
            except OverflowError:
                return math.inf if value > 0 else -math.inf
        return value if isinstance(value, float) else _BAD
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and value.bit_length() >= 14_000:
            return _BAD  # past Python's 4300-digit limit of int -> str
        if isinstance(value, (int, float)):
            return str(value)
        return _BAD
    return value if isinstance(value, tp) else _BAD


def _options(value: str, options: tuple[str, ...], limit: int = 120) -> str:
    """The valid options for a message: all of them when short, else the first few, how many there
    are and the closest to ``value``."""
    joined = ", ".join(options)
    if len(joined) <= limit:
        return joined
    shown = abbreviate(joined, limit).rsplit(", ", 1)[0]
    close = difflib.get_close_matches(value.lower(), options, n=1) if len(value) <= 100 else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{shown}, ... ({len(options)} in all{hint})"


def _num(x: float) -> str:
    return "inf" if x == math.inf else (str(int(x)) if float(x).is_integer() else str(x))


def _text(key: Any) -> str:
    """A mapping key as text (an int past Python's 4300-digit limit of int -> str, by its size)."""
    return _describe(key) if isinstance(key, int) and abs(key) >= 10**20 else str(key)


def _describe(value: Any) -> str:
    """A value as quoted in a one-line message: short, without line breaks."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return f"'{abbreviate(value)}'"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        # (str() of an int past 4300 digits raises; the digit count is exact below that)
        digits = len(str(abs(value))) if value.bit_length() < 14_000 else int(value.bit_length() * 0.30103)
        return f"{'-' if value < 0 else ''}<{digits} digits>"
    return abbreviate(repr(value))
