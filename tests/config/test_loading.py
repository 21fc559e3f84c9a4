"""Loading specs: YAML and JSON, YAML-typed dotted overrides, the Python API."""

from __future__ import annotations

import pytest
import yaml

import rtdetr
from rtdetr.config import ExperimentConfig
from rtdetr.errors import SpecError


def test_defaults_without_a_spec():
    cfg = rtdetr.load_spec()
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.backbone == "resnet_50"
    assert cfg.train.optim.lr == 0.0001


def test_yaml_and_json_give_the_same_spec(write_spec):
    data = {"model": {"backbone": "resnet_18", "dec_layers": 3}, "train": {"num_epochs": 4}}
    assert rtdetr.load_spec(write_spec(data, "a.yaml")) == rtdetr.load_spec(write_spec(data, "a.json"))


def test_overrides_are_yaml_typed(write_spec):
    cfg = rtdetr.load_spec(
        write_spec({}),
        overrides=[
            "train.num_gpus=2",
            "train.gpu_ids=[0,1]",
            "model.pretrained_backbone_path=null",
            "train.enable_ema=true",
            "train.optim.lr=1e-4",  # YAML 1.1 reads this as a string: accepted for a float field
            "train.optim.lr_steps=[10, 20]",
            "inference.color_map={RBC: red, WBC: '#00ff00'}",
            "results_dir=/tmp/x",
        ],
    )
    assert cfg.train.gpu_ids == [0, 1] and cfg.train.num_gpus == 2
    assert cfg.model.pretrained_backbone_path is None
    assert cfg.train.enable_ema is True
    assert cfg.train.optim.lr == pytest.approx(1e-4) and isinstance(cfg.train.optim.lr, float)
    assert cfg.train.optim.lr_steps == [10, 20]
    assert cfg.inference.color_map == {"RBC": "red", "WBC": "#00ff00"}
    assert cfg.results_dir == "/tmp/x"


def test_override_indexes_lists(write_spec):
    spec = write_spec({"dataset": {"train_data_sources": [{"image_dir": "a", "json_file": "a.json"}]}})
    cfg = rtdetr.load_spec(spec, overrides=["dataset.train_data_sources.0.image_dir=/data/b"])
    assert cfg.dataset.train_data_sources[0].image_dir == "/data/b"
    assert cfg.dataset.train_data_sources[0].json_file == "a.json"
    with pytest.raises(SpecError, match="no item 3"):
        rtdetr.load_spec(spec, overrides=["dataset.train_data_sources.3.image_dir=x"])


def test_override_wins_over_file(write_spec):
    cfg = rtdetr.load_spec(write_spec({"train": {"num_epochs": 5}}), overrides=["train.num_epochs=7"])
    assert cfg.train.num_epochs == 7


def test_options_are_case_insensitive_and_canonicalised():
    cfg = rtdetr.load_spec({"train": {"precision": "FP16", "optim": {"optimizer": "adamw"}}})
    assert cfg.train.precision == "fp16"
    assert cfg.train.optim.optimizer == "AdamW"


def test_single_items_stand_for_lists():
    cfg = rtdetr.load_spec(
        {
            "dataset": {
                "train_data_sources": {"image_dir": "a", "json_file": "b"},
                "infer_data_sources": {"image_dir": "/images"},
            }
        }
    )
    assert cfg.dataset.train_data_sources[0].json_file == "b"
    assert cfg.dataset.infer_data_sources.image_dir == ["/images"]


def test_interpolation_is_resolved():
    cfg = rtdetr.load_spec({"results_dir": "/r", "train": {"results_dir": "${results_dir}/t"}})
    assert cfg.train.results_dir == "/r/t"


def test_empty_sections_take_defaults(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("model:\ntrain:\n  num_epochs: 2\n")
    cfg = rtdetr.load_spec(path)
    assert cfg.model.hidden_dim == 256 and cfg.train.num_epochs == 2


def test_python_api_raises_with_every_problem():
    with pytest.raises(SpecError) as info:
        rtdetr.load_spec({"model": {"num_queries": -1, "hiden_dim": 3}}, action="export")
    lines = info.value.lines()
    assert any("model.num_queries: value -1 is below valid_min 1" in line for line in lines)
    assert any("model.hiden_dim: unknown key (did you mean 'model.hidden_dim'?)" in line for line in lines)
    assert any("export.checkpoint: required for export" in line for line in lines)


def test_unknown_action():
    with pytest.raises(rtdetr.errors.UserError, match="unknown action 'fly'"):
        rtdetr.load_spec({}, action="fly")


@pytest.mark.parametrize("action", ["train", "evaluate", "inference", "export", "distill", "gen_trt_engine"])
def test_get_spec_validates_unchanged_apart_from_required_paths(cli, tmp_path, action):
    result = cli("-q", "get-spec", "--action", action)
    assert result.code == 0
    spec = tmp_path / "default.yaml"
    spec.write_text(result.out)
    assert cli("validate", "-e", spec).code == 0
    with_action = cli("validate", "-e", spec, "--action", action)
    assert with_action.error_lines, "each task requires at least one path"
    assert all("required for" in line for line in with_action.error_lines), with_action.err


def test_validate_prints_resolved_spec(cli, write_spec):
    result = cli(
        "-q", "validate", "-e", write_spec({"model": {"backbone": "resnet_18"}}), "train.num_epochs=3"
    )
    assert result.code == 0
    resolved = yaml.safe_load(result.out)
    assert resolved["model"]["backbone"] == "resnet_18"
    assert resolved["train"]["num_epochs"] == 3
    assert resolved["train"]["optim"]["lr"] == 0.0001
