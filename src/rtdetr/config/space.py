"""The search space of AutoML, read from the spec schema's field metadata.

Every field marked ``automl_enabled`` is a dimension:

- integer or float by the field's type; a field with ``valid_options`` is categorical;
- its range: the documented ``valid_min``..``valid_max`` when both are finite (probabilities,
  momentum, EMA decay); otherwise the field's default ÷10 .. ×10, clipped to the field's enforced
  bounds (and, for ``dataset.workers``, to this machine's CPUs; for ``train.num_epochs``, to
  ``automl.max_epochs``);
- log scale for the learning rates and the weight decay.

``automl.ranges`` replaces a dimension's range (min, max, log) or gives it a list of values.
Sampled values are set into a spec together with the cross-field rule the documentation names
(``num_select`` <= ``num_queries``: num_select is clamped), so that every sampled spec validates.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtdetr.common.dotted import get_path, set_path
from rtdetr.config.fields import field_info
from rtdetr.config.schema import AUTOML_PARAMETERS, ExperimentConfig
from rtdetr.config.validate import type_hints, unwrap_optional
from rtdetr.errors import SpecError

LOG_SCALE = frozenset({"train.optim.lr", "train.optim.lr_backbone", "train.optim.weight_decay"})


@dataclass(frozen=True)
class Dimension:
    """One searched field: ``kind`` int, float or categorical."""

    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """The value an Optuna trial samples for this field."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.path, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.path}: one of {list(self.choices)}"
        scale = ", log scale" if self.log else ""
        return f"{self.path}: {self.kind} in [{_short(self.low)}, {_short(self.high)}]{scale}"


def _short(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def _field(path: str) -> tuple[dataclasses.Field, Any]:
    """The dataclass field at a dotted path of the spec, and its type."""
    cls: Any = ExperimentConfig
    names = path.split(".")
    for i, name in enumerate(names):
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        tp = type_hints(cls)[name]
        if i == len(names) - 1:
            return f, tp
        cls, _ = unwrap_optional(tp)
    raise KeyError(path)


def default_dimension(path: str, max_epochs: int | None = None) -> Dimension:
    """The schema's dimension of an automl_enabled field (rules in the module docstring)."""
    f, tp = _field(path)
    info = field_info(f)
    inner, _ = unwrap_optional(tp)
    if info.valid_options is not None:
        return Dimension(path, "categorical", choices=tuple(info.valid_options))
    kind = "int" if inner is int else "float"
    low_bound, high_bound = info.bounds()
    documented = [info.valid_min, info.valid_max]
    if all(b is not None and math.isfinite(b) for b in documented):
        low, high = float(info.valid_min), float(info.valid_max)
    else:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        low, high = default / 10, default * 10
        if kind == "int":
            low, high = max(1, math.ceil(low)) if default > 0 else 0, max(1, math.floor(high))
    if low_bound is not None:
        low = max(low, low_bound)
    if high_bound is not None and math.isfinite(high_bound):
        high = min(high, high_bound)
    if path == "dataset.workers":
        high = min(high, os.cpu_count() or 1)
    if path == "train.num_epochs" and max_epochs is not None:
        high = min(high, max_epochs)
    low = min(low, high)
    return Dimension(path, kind, low, high, log=path in LOG_SCALE and low > 0)


def search_space(parameters: Sequence[str], ranges: Sequence[Mapping] = (), max_epochs: int | None = None
                 ) -> list[Dimension]:  # fmt: skip
    """The dimensions of ``parameters`` (all automl_enabled fields when empty), with ``ranges``
    (``{parameter, min, max, log, values}``) replacing the schema's. SpecError lists every problem."""
    enabled = list(AUTOML_PARAMETERS)
    problems = [
        f"automl.parameters: '{p}' is not a field AutoML may tune; the fields: {', '.join(enabled)}"
        for p in parameters
        if p not in enabled
    ]
    chosen = [p for p in enabled if not parameters or p in parameters]
    dims = {p: default_dimension(p, max_epochs) for p in chosen if p in enabled}
    for i, r in enumerate(ranges):
        where = f"automl.ranges[{i}]"
        path = r.get("parameter")
        if path not in dims:
            problems.append(f"{where}.parameter: '{path}' is not one of the searched parameters")
            continue
        problems += _override(dims, path, r, where)
    if problems:
        raise SpecError(problems)
    return list(dims.values())


def _override(dims: dict[str, Dimension], path: str, r: Mapping, where: str) -> list[str]:
    base = dims[path]
    values = list(r.get("values") or [])
    low_bound, high_bound = field_info(_field(path)[0]).bounds()

    def outside(v: float) -> bool:
        return (low_bound is not None and v < low_bound) or (high_bound is not None and v > high_bound)

    if values:
        if base.kind == "int":
            values = [int(v) if float(v).is_integer() else v for v in values]
            if any(not isinstance(v, int) for v in values):
                return [f"{where}.values: {path} takes whole numbers"]
        bad = [v for v in values if not isinstance(v, str) and outside(v)]
        if bad:
            return [
                f"{where}.values: {bad} outside {path}'s bounds [{_short(low_bound)}, {_short(high_bound)}]"
            ]
        dims[path] = Dimension(path, "categorical", choices=tuple(values))
        return []
    low = base.low if r.get("min") is None else float(r["min"])
    high = base.high if r.get("max") is None else float(r["max"])
    log = base.log if r.get("log") is None else bool(r["log"])
    problems = []
    if low > high:
        problems.append(f"{where}: min {low:g} is above max {high:g}")
    for name, v in (("min", low), ("max", high)):
        if outside(v):
            problems.append(
                f"{where}.{name}: {v:g} outside {path}'s bounds [{_short(low_bound)}, {_short(high_bound)}]"
            )
    if log and low <= 0:
        problems.append(f"{where}.log: a log scale needs min > 0 (got {low:g})")
    if base.kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        problems.append(f"{where}: {path} takes whole numbers")
    if not problems:
        dims[path] = Dimension(path, base.kind, low, high, log)
    return problems


def apply_params(base: Mapping, params: Mapping[str, Any]) -> dict:
    """``base`` (a full spec as data) with the sampled ``params`` set; num_select is clamped to
    num_queries, as the documentation's dependency between them asks."""
    spec = copy.deepcopy(dict(base))
    for path, value in params.items():
        set_path(spec, path, value)
    queries, select = get_path(spec, "model.num_queries"), get_path(spec, "model.num_select")
    if isinstance(queries, int) and isinstance(select, int) and select > queries:
        set_path(spec, "model.num_select", queries)
    return spec
