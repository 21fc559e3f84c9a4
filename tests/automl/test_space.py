"""The AutoML search space from the schema: its fields, ranges, overrides, and sampled specs that
all validate."""

from __future__ import annotations

import optuna
import pytest

from rtdetr.automl.search import trial_spec
from rtdetr.config import load_spec, spec_to_dict
from rtdetr.config.reference import automl_fields
from rtdetr.config.schema import AUTOML_PARAMETERS
from rtdetr.config.space import apply_params, default_dimension, search_space
from rtdetr.errors import SpecError

SOURCES = {
    "dataset.train_data_sources": [{"image_dir": "data/images", "json_file": "data/train.json"}],
    "dataset.val_data_sources": {"image_dir": "data/images", "json_file": "data/val.json"},
}


def base_spec(**extra) -> dict:
    overrides = [f"{k}={v}" for k, v in {**SOURCES, **extra}.items()]
    return spec_to_dict(load_spec(None, [o.replace("'", '"') for o in overrides]))


def test_the_space_is_the_schemas_automl_enabled_fields():
    assert tuple(automl_fields()) == AUTOML_PARAMETERS
    dims = {d.path: d for d in search_space([])}
    assert list(dims) == automl_fields()
    assert (
        dims["dataset.augmentation.distortion_prob"].low,
        dims["dataset.augmentation.distortion_prob"].high,
    ) == (0, 1)
    lr = dims["train.optim.lr"]
    assert lr.kind == "float" and lr.log and lr.low == pytest.approx(1e-5) and lr.high == pytest.approx(1e-3)
    assert (
        dims["model.num_queries"].kind,
        dims["model.num_queries"].low,
        dims["model.num_queries"].high,
    ) == ("int", 30, 3000)
    assert dims["model.dec_layers"].high == 32  # 60 is past the field's limit
    assert search_space([], max_epochs=4)[automl_fields().index("train.num_epochs")].high == 4
    assert not dims["train.optim.momentum"].log and dims["train.optim.momentum"].high == 1.0


def test_ranges_override_the_schema_and_bad_ones_are_listed():
    dims = search_space(
        ["train.optim.lr", "dataset.batch_size"],
        [{"parameter": "train.optim.lr", "min": 1e-4, "max": 2e-4, "log": False},
         {"parameter": "dataset.batch_size", "values": [4, 8]}],
    )  # fmt: skip
    assert [(d.path, d.kind, d.low, d.high, d.log, d.choices) for d in dims] == [
        ("dataset.batch_size", "categorical", None, None, False, (4, 8)),
        ("train.optim.lr", "float", 1e-4, 2e-4, False, ()),
    ]
    with pytest.raises(SpecError) as caught:
        search_space(
            ["train.optim.lr", "model.backbone"],
            [{"parameter": "train.optim.lr", "min": 0.0, "log": True}, {"parameter": "dataset.workers", "min": 1},
             {"parameter": "train.optim.lr", "min": 0.1, "max": 0.01}],
        )  # fmt: skip
    problems = caught.value.problems
    assert len(problems) == 4
    assert problems[0].startswith("automl.parameters: 'model.backbone' is not a field AutoML may tune")
    assert "automl.ranges[0].log: a log scale needs min > 0" in problems[1]
    assert problems[2].startswith("automl.ranges[1].parameter: 'dataset.workers'")
    assert problems[3] == "automl.ranges[2]: min 0.1 is above max 0.01"


def test_two_hundred_sampled_specs_all_validate(tmp_path):
    base = base_spec()
    dims = search_space([], max_epochs=6)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    selects_clamped = 0
    for n in range(200):
        trial = study.ask()
        params = {d.path: d.suggest(trial) for d in dims}
        spec = trial_spec(base, params, tmp_path / f"trial_{n:03d}", max_epochs=6)
        load_spec(spec, action="train")  # raises on any problem
        assert spec["model"]["num_select"] <= spec["model"]["num_queries"]
        assert spec["train"]["num_epochs"] <= 6 and spec["train"]["validation_interval"] == 1
        selects_clamped += params["model.num_select"] > params["model.num_queries"]
        study.tell(trial, 0.0)
    assert selects_clamped > 0  # the rule was exercised


def test_a_default_dimension_for_each_field_lies_in_its_bounds():
    for path in automl_fields():
        d = default_dimension(path)
        assert d.low <= d.high, path
    spec = apply_params(base_spec(), {"model.num_queries": 50, "model.num_select": 80})
    assert spec["model"]["num_select"] == 50


def test_validate_checks_the_automl_section(cli, write_spec):
    spec = write_spec({
        "dataset": {"train_data_sources": [{"image_dir": "a", "json_file": "b.json"}],
                    "val_data_sources": {"image_dir": "a", "json_file": "c.json"}},
        "automl": {"algorithm": "grid", "ranges": [{"parameter": "train.optim.lr", "min": 0.1, "max": 0.01},
                                                   {"parameter": "train.optim.weight_decay", "min": 0, "log": True}]},
    })  # fmt: skip
    result = cli("validate", "-e", spec, "--action", "automl")
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 3, result.err
    assert (
        "automl.algorithm: value 'grid' is not one of the valid_options: bayesian, bohb, hyperband, asha, pbt"
        in lines[0]
    )
    assert lines[1].endswith("automl.ranges[0]: min 0.1 is above max 0.01")
    assert lines[2].endswith("automl.ranges[1].log: a log scale needs min > 0 (got 0)")
    assert (
        cli("validate", "-e", spec, "automl.algorithm=asha", "automl.ranges=[]", "--action", "automl").code
        == 0
    )
