"""Random, partly hostile overrides of every spec field: each spec loads, or fails as a UserError of
short one-line problems; none raises anything else or takes long. A loaded spec's model section
also gives build_model's arguments and a size estimate (or a UserError)."""

from __future__ import annotations

import dataclasses
import math
import random
import time
import typing
from typing import Any

import pytest

import rtdetr
from rtdetr.config.fields import FieldInfo, field_info
from rtdetr.config.loader import spec_to_dict
from rtdetr.config.reference import default_spec
from rtdetr.config.schema import ExperimentConfig
from rtdetr.config.validate import schema_paths, type_hints, unwrap_optional
from rtdetr.errors import UserError
from rtdetr.model.budget import estimate_model_size
from rtdetr.model.factory import model_kwargs

SEED = 20260601
CASES = 400
MAX_CASE_SECONDS = 2.0
MAX_LINE = 300
ESTIMATE_FRACTION = 0.5  # of the accepted cases whose model size is estimated (a meta-device build)

# The default spec with one distillation binding: every field, list items included, can be overridden.
BASE = default_spec()
BASE["distill"]["bindings"] = [{"teacher_module_name": "encoder", "student_module_name": "encoder"}]
BASE["dataset"]["eval_class_ids"] = [1]

ALIAS_BOMB = (
    "[&a [x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
    "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], "
    "&e [*d, *d, *d, *d, *d, *d, *d, *d, *d], &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]]"
)

# YAML texts of values no field documents, tried on every kind of field
HOSTILE = [
    ".nan",
    ".NaN",
    ".inf",
    "-.inf",
    "+.inf",
    "0",
    "-1",
    "0.0",
    "-0.0",
    "1",
    "true",
    "null",
    "~",
    "''",
    "' '",
    "1.0e+300",
    "-1.0e+300",
    "1e300",
    "1e-4",
    "1e999",
    "2.5",
    "0x10",
    "0o17",
    "1_000",
    "1:20",
    "'nan'",
    "'inf'",
    "'\u0661\u0662'",
    "\u0661\u0662",
    "'\u00b2'",
    "'١٠٠'",
    "2024-01-01",
    "2001-12-14t21:59:43.10-05:00",
    "'a\\nb'",
    '"line\\nbreak\\r\\x00"',
    "'\u200b'",
    "[]",
    "{}",
    "[1, 2, 3]",
    "[[1, [2, [3]]]]",
    "{a: {b: c}}",
    "[{a: 1}, 2, x]",
    "{1: 2, null: 3}",
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!python/object:os.system ls",
    "*undefined",
    "&x [*x]",
    "${model.hidden_dim}",
    "${nope}",
    "???",
    "[" * 40 + "]" * 40,
    ALIAS_BOMB,
    "{<<: {a: 1}}",
    "[" + ", ".join(str(i) for i in range(300)) + "]",
]


def _huge_int(rng: random.Random) -> str:
    digits = rng.randint(19, 301)
    return (
        rng.choice(["", "-"])
        + str(rng.randint(1, 9))
        + "".join(rng.choice("0123456789") for _ in range(digits - 1))
    )


def _long_text(rng: random.Random) -> str:
    return rng.choice(["x" * 100_000, "'" + "ab\\n" * 30_000 + "'", '"' + "\\u00e9" * 20_000 + '"'])


def _field(path: str) -> tuple[Any, FieldInfo]:
    """(type, metadata) of a dotted schema path (``[]`` marks the items of a list of sections)."""
    cls: Any = ExperimentConfig
    tp: Any = None
    info = FieldInfo()
    for name in path.replace("[]", "").split("."):
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        tp, info = type_hints(cls)[name], field_info(f)
        inner, _ = unwrap_optional(tp)
        if typing.get_origin(inner) is list:
            inner = typing.get_args(inner)[0]
        cls = inner
    return tp, info


def _yaml_number(x: float) -> str:
    if isinstance(x, float) and math.isinf(x):
        return ".inf" if x > 0 else "-.inf"
    return repr(x)


def _typed(rng: random.Random, tp: Any, info: FieldInfo) -> str:
    """A YAML value of the field's type, mostly at or just beyond its documented and practical edges."""
    inner, optional = unwrap_optional(tp)
    if optional and rng.random() < 0.1:
        return "null"
    origin = typing.get_origin(inner)
    if origin is list:
        item = typing.get_args(inner)[0]
        if dataclasses.is_dataclass(item):
            return "[{}]"
        n = rng.choice([0, 1, 2, 3, 4, 5, 12])
        return "[" + ", ".join(_typed(rng, item, info) for _ in range(n)) + "]"
    if origin is dict:
        return rng.choice(["{}", "{a: red}", "{a: 1}", "{'x\\ny': blue}", "{a: [1]}"])
    if dataclasses.is_dataclass(inner):
        return rng.choice(["{}", "null", "[]"])
    if inner is bool:
        return rng.choice(["true", "false"])
    if inner is str:
        if info.valid_options:
            option = rng.choice(info.valid_options)
            return rng.choice([option, option.upper(), option + "x", "'" + option[:-1] + "'"])
        return rng.choice(["a", "/tmp/x", "'with space'", "'???'", "''", "'ü/é'"])
    low, high = info.bounds()
    edges = [b for b in (low, high) if b is not None and not math.isinf(b)]
    near = [e + d for e in edges for d in (-1, 0, 1)] + [0, 1, -1, 32, 64, 256, 640]
    if inner is int:
        if edges and rng.random() < 0.5:
            return str(rng.randint(int(min(edges)), int(max(edges))))
        return str(int(rng.choice(near)))
    values = [*near, *(e / 2 for e in edges), 1e-9, 0.5, 1e300, -1e300]
    return _yaml_number(float(rng.choice(values)))


def _value(rng: random.Random, tp: Any, info: FieldInfo) -> str:
    roll = rng.random()
    if roll < 0.45:
        return _typed(rng, tp, info)
    if roll < 0.85:
        return rng.choice(HOSTILE)
    if roll < 0.95:
        return _huge_int(rng)
    return _long_text(rng)


def _override(rng: random.Random, leaves: list[str]) -> str:
    path = rng.choice(leaves)
    tp, info = _field(path)
    key = path.replace("[]", ".0")
    inner, _ = unwrap_optional(tp)
    is_scalar_list = typing.get_origin(inner) is list and not dataclasses.is_dataclass(
        typing.get_args(inner)[0]
    )
    if is_scalar_list and rng.random() < 0.4:  # one item of the list
        key += f".{rng.choice([0, 1, 2, 3])}"
        tp = typing.get_args(inner)[0]
    if rng.random() < 0.03:
        key = rng.choice([key + "x", key + ".sub", "x" * 5_000, "model.\u0661", "model..x", key.upper()])
    return f"{key}={_value(rng, tp, info)}"


def _leaves() -> list[str]:
    """Every field path, sections included (an override may replace a whole section)."""
    return list(schema_paths(ExperimentConfig))


def _check_lines(lines: list[str], case: str) -> None:
    assert lines, case
    for line in lines:
        assert "\n" not in line and "\r" not in line, (case, line[:500])
        assert len(line) <= MAX_LINE, (case, len(line), line[:500])


def _assert_within_bounds(section: Any, path: str = "") -> None:
    """Every number of an accepted spec is finite and within its field's enforced bounds."""
    for f in dataclasses.fields(section):
        value, info = getattr(section, f.name), field_info(f)
        here = f"{path}{f.name}"
        values = value if isinstance(value, list) else [value]
        for v in values:
            if dataclasses.is_dataclass(v):
                _assert_within_bounds(v, here + ".")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                low, high = info.bounds()
                assert math.isfinite(v), here
                assert (low is None or v >= low) and (high is None or v <= high), (here, v)


def _short(overrides: list[str]) -> list[str]:
    return [o if len(o) < 120 else o[:100] + f"...({len(o)} chars)" for o in overrides]


def test_random_overrides_load_or_fail_cleanly():
    rng = random.Random(SEED)
    leaves = _leaves()
    estimate_model_size(spec_to_dict(rtdetr.load_spec().model), 80)  # imports the model code: not timed
    failures: list[str] = []
    counts = {"accepted": 0, "refused": 0, "estimated": 0}
    for case in range(CASES):
        overrides = [_override(rng, leaves) for _ in range(rng.choice([1, 1, 2, 3]))]
        # mostly on the default values of the sections overridden (so that list items exist)
        sections = {o.split(".")[0].split("=")[0] for o in overrides}
        base = {k: BASE[k] for k in sections if k in BASE} if rng.random() < 0.7 else None
        label = f"case {case}: {_short(overrides)}"
        start = time.perf_counter()
        try:
            cfg = rtdetr.load_spec(base, overrides=overrides)
            _assert_within_bounds(cfg)
            kwargs = model_kwargs(spec_to_dict(cfg.model), cfg.dataset.num_classes)
            assert kwargs["num_classes"] == cfg.dataset.num_classes
            if rng.random() < ESTIMATE_FRACTION:
                counts["estimated"] += 1
                estimate_model_size(spec_to_dict(cfg.model), cfg.dataset.num_classes)
            counts["accepted"] += 1
        except UserError as exc:
            counts["refused"] += 1
            try:
                _check_lines(exc.lines(), label)
            except AssertionError as bad:
                failures.append(f"{label}: bad message {bad}")
        except Exception as exc:  # noqa: BLE001 - the point of the test
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
        elapsed = time.perf_counter() - start
        if elapsed > MAX_CASE_SECONDS:
            failures.append(f"{label}: took {elapsed:.1f} s")
    assert not failures, "\n".join(failures[:20]) + f"\n({len(failures)} failures; {counts})"
    # the generator reaches both outcomes
    assert counts["accepted"] > CASES // 10 and counts["refused"] > CASES // 2, counts


@pytest.mark.parametrize("value", HOSTILE + ["x" * 100_000, "9" * 301])
def test_every_hostile_value_on_a_few_kinds_of_field(value):
    for key in ("model.hidden_dim", "train.optim.lr", "model.backbone", "train.gpu_ids", "train.gpu_ids.0",
                "inference.color_map", "model.frozen_fm", "results_dir", "dataset.train_data_sources"):  # fmt: skip
        start = time.perf_counter()
        try:
            rtdetr.load_spec(overrides=[f"{key}={value}"])
        except UserError as exc:
            _check_lines(exc.lines(), f"{key}={value[:60]}")
        assert time.perf_counter() - start < MAX_CASE_SECONDS, key
