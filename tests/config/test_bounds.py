"""Practical bounds: no NaN or infinity, no int past what a model reaches and a machine holds, no rule
working on a value already refused, and problems quoted short and on one line."""

from __future__ import annotations

import dataclasses
import math
import time
import typing

import pytest

import rtdetr
from rtdetr.config.fields import field_info
from rtdetr.config.reference import default_spec, iter_fields, json_schema, markdown_reference
from rtdetr.config.rules import rule_problems
from rtdetr.config.schema import ExperimentConfig
from rtdetr.config.validate import SpecBuilder, unwrap_optional
from rtdetr.errors import SpecError

# The default spec with one distillation binding: every field, list item included, can be overridden.
BASE = default_spec()
BASE["distill"]["bindings"] = [{"teacher_module_name": "encoder", "student_module_name": "encoder"}]
BASE["dataset"]["eval_class_ids"] = [1]
BASE["automl"]["ranges"] = [{"parameter": "train.optim.lr", "values": [0.001]}]


def _numeric_fields(kind: type) -> list[tuple[str, str]]:
    """(override key, path in messages) of every field whose values (or list items) are ``kind``."""
    out = []
    for path, _, tp in iter_fields():
        inner, _ = unwrap_optional(tp)
        is_list = typing.get_origin(inner) is list
        if is_list:
            inner = typing.get_args(inner)[0]
        if inner is kind:
            key, shown = path.replace("[]", ".0"), path.replace("[]", "[0]")
            out.append((f"{key}.0", f"{shown}[0]") if is_list else (key, shown))
    return out


FLOAT_FIELDS = _numeric_fields(float)
INT_FIELDS = _numeric_fields(int)


def _base_for(key: str) -> dict:
    """The default section that ``key`` overrides (the whole spec would only be slower)."""
    section = key.split(".")[0]
    return {section: BASE[section]}


def _refused(overrides: list[str], base: dict | None) -> list[str]:
    with pytest.raises(SpecError) as caught:
        rtdetr.load_spec(base, overrides=overrides)
    return caught.value.lines()


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "'nan'", "'1e999'"])
@pytest.mark.parametrize(("key", "path"), FLOAT_FIELDS, ids=[k for k, _ in FLOAT_FIELDS])
def test_no_float_field_takes_nan_or_infinity(key, path, value):
    lines = _refused([f"{key}={value}"], _base_for(key))
    assert len(lines) == 1, lines
    assert f"spec: {path}: " in lines[0]
    assert "not a finite number" in lines[0] or "expected float" in lines[0]


@pytest.mark.parametrize("value", ["1.0e+300", "9" * 19, "-" + "9" * 19, "9" * 301, ".nan", ".inf"])
@pytest.mark.parametrize(("key", "path"), INT_FIELDS, ids=[k for k, _ in INT_FIELDS])
def test_every_int_field_is_bounded(key, path, value):
    lines = _refused([f"{key}={value}"], _base_for(key))
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"spec: {path}: ") and len(lines[0]) < 200, lines[0]


def test_every_int_field_documents_its_upper_bound():
    schema_doc = markdown_reference()
    for path, f, tp in iter_fields():
        inner, _ = unwrap_optional(tp)
        if typing.get_origin(inner) is list:
            inner = typing.get_args(inner)[0]
        if inner is not int:
            continue
        info = field_info(f)
        low, high = info.bounds()
        assert low is not None and high is not None and math.isfinite(high), path
        if info.limit_max is not None:
            assert info.note, f"{path}: a practical bound needs a note"
        if not path.startswith("distill.teacher."):
            assert f"| `{path}` |" in schema_doc


def test_json_schema_exports_limits_beside_documented_range():
    model = json_schema()["properties"]["model"]["properties"]
    enc = model["enc_layers"]
    assert enc["x-valid-min"] == 1 and enc["x-valid-max"] is None  # as documented
    assert enc["x-limit-max"] == 32 and enc["maximum"] == 32  # enforced
    assert model["num_queries"]["x-valid-max"] == "inf" and model["num_queries"]["x-limit-max"] == 5000
    assert model["return_interm_indices"]["items"]["maximum"] == 3


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.enc_layers=100000000000", "model.enc_layers: value 100000000000 is above this toolkit's limit 32"),
        ("model.dec_layers=1.0e+300", "model.dec_layers: expected int, got 1e+300"),
        ("train.seed=1.0e+300", "train.seed: expected int, got 1e+300"),
        ("train.seed=4294967296", "train.seed: value 4294967296 is above this toolkit's limit 4294967295"),
        ("model.pe_temperature=1.0e+300", "model.pe_temperature: expected int, got 1e+300"),
        ("model.hidden_dim=" + "9" * 301, "model.hidden_dim: value <301 digits> is above this toolkit's limit 4096"),
        ("train.optim.lr=" + "9" * 400, "train.optim.lr: value <400 digits> is not a finite number"),
        ("train.optim.lr=.nan", "train.optim.lr: value nan is not a finite number"),
        ("train.optim.momentum=.nan", "train.optim.momentum: value nan is not a finite number"),
        ("model.gamma=.nan", "model.gamma: value nan is not a finite number"),
        ("model.gamma=-.inf", "model.gamma: value -inf is not a finite number"),
        ("model.expansion=0", "model.expansion: value 0.0: the CSP width int(encoder width 256 x expansion) must be at least 1"),
        ("model.expansion=0.001", "model.expansion: value 0.001: the CSP width"),
        ("model.expansion=9", "model.expansion: value 9.0 is above this toolkit's limit 8"),
        ("model.encoder_hidden_dim=100", "model.encoder_hidden_dim: value 100: the encoder width must be divisible by nheads (8) and by 4"),
        ("model.hidden_dim=36", "model.hidden_dim: value 36 must be divisible by nheads (8)"),
        ("model.num_queries=5001", "model.num_queries: value 5001 is above this toolkit's limit 5000"),
        ("dataset.augmentation.train_spatial_size=[640, 100000]", "dataset.augmentation.train_spatial_size[1]: value 100000 is above this toolkit's limit 8192"),
        ("train.gpu_ids=[-1]", "train.gpu_ids[0]: value -1 is below this toolkit's limit 0"),
        ("train.optim.lr_steps=[10, 10000000000]", "train.optim.lr_steps[1]: value 10000000000 is above this toolkit's limit 1000000000"),
        ("results_dir=''", "results_dir: empty; give a folder, '.' for the current directory"),
        ("results_dir='  '", "results_dir: empty; give a folder, '.' for the current directory"),
        ("train.optim.lr='\u0661\u0662'", "train.optim.lr: expected float, got '\u0661\u0662'"),
    ],
)  # fmt: skip
def test_refused_in_one_line(override, expected):
    width = override.partition("=")[2] if override.endswith(("=100", "=36")) else None
    extra = [f"model.feat_channels=[{width}, {width}, {width}]"] if width else []
    lines = _refused([override, *extra], None)
    assert lines == [f"spec: {expected}"] or (len(lines) == 1 and expected in lines[0]), lines


@pytest.mark.parametrize(
    "override",
    ["model.enc_layers=32", "model.dec_layers=32", "model.num_queries=5000", "train.seed=4294967295",
     "train.optim.lr=1e-4", "train.optim.lr='1e-4'", "model.expansion=0.5", "model.pe_temperature=1000000",
     "dataset.augmentation.train_spatial_size=[8192, 32]", "results_dir=."],
)  # fmt: skip
def test_values_at_the_limits_are_accepted(override):
    rtdetr.load_spec(overrides=[override])


def test_ints_arriving_as_floats_are_converted_only_when_exact():
    assert rtdetr.load_spec(overrides=["model.dec_layers=3.0"]).model.dec_layers == 3
    _refused(["model.dec_layers=3.5"], None)
    _refused(["model.dec_layers=1.0e+16"], None)  # past 2**53: not an exact integer


def test_a_huge_list_item_is_refused_at_once_and_no_rule_touches_it():
    start = time.perf_counter()
    lines = _refused(["model.return_interm_indices=[1,2,10000000000]"], None)
    assert time.perf_counter() - start < 1.0
    assert lines == [
        "spec: model.return_interm_indices[2]: value 10000000000 is above this toolkit's limit 3"
    ]


def test_a_rule_does_not_report_the_consequences_of_an_earlier_rule():
    # num_feature_levels 2 does not match the three backbone levels; use_encoder_idx [2] is only
    # out of range because of that: one problem, not two
    lines = _refused(["model.num_feature_levels=2", "model.use_encoder_idx=[2]"], None)
    assert len(lines) == 1 and "model.num_feature_levels" in lines[0], lines


def test_rule_problems_leaves_the_builders_bad_paths_alone():
    builder = SpecBuilder(ExperimentConfig)
    cfg = builder.build({"model": {"num_feature_levels": 2}})
    before = set(builder.bad_paths)
    assert rule_problems(cfg, builder.bad_paths)
    assert builder.bad_paths == before


def test_many_bad_items_of_one_list_are_counted_in_one_line():
    lines = _refused(["train.gpu_ids=[a, b, c, d, e, f, g]"], None)
    assert lines[-1] == "spec: train.gpu_ids: 4 more bad items"
    assert len(lines) == 4


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"model": {"backbone": "a\nb" * 50_000}}, "model.backbone"),
        ({"model": {"hidden_dim": "x" * 100_000}}, "model.hidden_dim"),
        ({"model": {"x\ny" * 50_000: 1}}, "model.x\\ny"),
        ({"inference": {"color_map": {"k\n" * 10_000: [1]}}}, "inference.color_map.k\\n"),
        ({"model": {"hidden_dim": 10**5000}}, "model.hidden_dim"),
        ({"model": {"backbone": 10**5000}}, "model.backbone"),
        ({"train": {"optim": {"lr": 10**5000}}}, "train.optim.lr"),
    ],
)
def test_long_and_multiline_values_are_quoted_short(data, path):
    lines = _refused([], data)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"spec: {path}")
    assert "\n" not in lines[0] and len(lines[0]) < 300, lines[0][:400]


def test_long_option_lists_are_shortened_with_a_suggestion():
    (line,) = _refused(["model.backbone=resnet50"], None)
    assert "did you mean 'resnet_50'?" in line and "40 in all" in line and len(line) < 300


def test_teacher_has_the_same_bounds():
    (line,) = _refused(["distill.teacher.dec_layers=33"], None)
    assert line == "spec: distill.teacher.dec_layers: value 33 is above this toolkit's limit 32"


def test_documented_metadata_is_kept_beside_the_limits():
    fields = {f.name: f for f in dataclasses.fields(ExperimentConfig().model)}
    info = field_info(fields["dn_number"])
    assert (info.valid_min, info.valid_max, info.limit_max) == (0, math.inf, 1000)


def test_keys_that_cannot_be_printed_whole_are_described():
    builder = SpecBuilder(ExperimentConfig)
    builder.build({10**5000: 1, "inference": {"color_map": {10**5000: [1]}}, "model": {"x" * 100_000: 1}})
    lines = [str(p) for p in builder.problems]
    assert lines[0] == "<5000 digits>: unknown key"
    assert lines[1].startswith("model.xxxx") and lines[1].endswith("...: unknown key") and len(lines[1]) < 100
    assert lines[2] == "inference.color_map.<5000 digits>: expected string, got a list"
