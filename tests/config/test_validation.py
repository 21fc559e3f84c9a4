"""Every bad-spec case: exit 2, one line naming the field, no traceback; all problems at once."""

from __future__ import annotations

import pytest

# (spec mapping, overrides, expected substring of the one error line)
FIELD_CASES = {
    "unknown key with closest": ({"model": {"num_querie": 10}}, [], "model.num_querie: unknown key (did you mean 'model.num_queries'?)"),
    "unknown key in wrong section": ({"model": {"num_epochs": 3}}, [], "model.num_epochs: unknown key (did you mean 'train.num_epochs'?)"),
    "unknown section": ({"trainer": {}}, [], "trainer: unknown key (did you mean 'train'?)"),
    "wrong type int": ({"train": {"num_epochs": "ten"}}, [], "train.num_epochs: expected int, got 'ten'"),
    "wrong type bool": ({"train": {"enable_ema": "yes please"}}, [], "train.enable_ema: expected bool"),
    "wrong type list": ({"model": {"feat_strides": 8}}, [], "model.feat_strides: expected a list"),
    "wrong item type": ({"train": {"gpu_ids": [0, "a"]}}, [], "train.gpu_ids[1]: expected int"),
    "section not a mapping": ({"model": [1, 2]}, [], "model: expected a mapping (section), got a list"),
    "below valid_min": ({"model": {"num_queries": 0}}, [], "model.num_queries: value 0 is below valid_min 1"),
    "above valid_max": ({"model": {"dropout_ratio": 1.5}}, [], "model.dropout_ratio: value 1.5 is above valid_max 1"),
    "not in valid_options": ({"train": {"precision": "fp8"}}, [], "train.precision: value 'fp8' is not one of the valid_options: bf16, fp32, fp16"),
    "list item not in options": ({"model": {"loss_types": ["vfl", "dice"]}}, [], "model.loss_types[1]: value 'dice' is not one of"),
    "null for a non-null field": ({"train": {"seed": None}}, [], "train.seed: expected int, got null"),
    "feature level lengths": ({"model": {"num_feature_levels": 2, "use_encoder_idx": [1]}}, [], "model.num_feature_levels: num_feature_levels is 2 but return_interm_indices has 3"),
    "feat_channels length": ({"model": {"feat_channels": [256, 256]}}, [], "feat_channels has 2; all must be equal"),
    "gpu ids vs num_gpus": ({"train": {"gpu_ids": [0, 1]}}, [], "train.gpu_ids: has 2 ids but train.num_gpus is 1"),
    "checkpoint interval": ({"train": {"num_epochs": 3, "checkpoint_interval": 5}}, [], "train.checkpoint_interval: value 5 exceeds train.num_epochs (3)"),
    "validation interval": ({"train": {"num_epochs": 3, "validation_interval": 4}}, [], "train.validation_interval: value 4 exceeds train.num_epochs (3)"),
    "num_select": ({"model": {"num_queries": 10, "num_select": 31}, "dataset": {"num_classes": 3}}, [], "model.num_select: value 31 exceeds num_queries x num_classes (10 x 3)"),
    "feat_channels width": ({"model": {"hidden_dim": 128, "nheads": 8}}, [], "model.feat_channels: [256, 256, 256]: each level must have the encoder width 128"),
    "feat_strides vs indices": ({"model": {"feat_strides": [4, 8, 16]}}, [], "model.feat_strides: [4, 8, 16] do not match return_interm_indices [1, 2, 3] (backbone strides [8, 16, 32])"),
    "use_encoder_idx": ({"model": {"use_encoder_idx": [3]}}, [], "model.use_encoder_idx: [3] outside the feature levels 0..2"),
    "eval_idx": ({"model": {"dec_layers": 3, "eval_idx": 3}}, [], "model.eval_idx: value 3 must be below dec_layers (3)"),
    "teacher rules": ({"distill": {"teacher": {"feat_strides": [8, 16]}}}, [], "distill.teacher.num_feature_levels:"),
    "spatial size": ({"dataset": {"augmentation": {"eval_spatial_size": [640, 650]}}}, [], "dataset.augmentation.eval_spatial_size: [640, 650]: each side must be a positive multiple of 32"),
    "adamw momentum": ({"train": {"optim": {"momentum": 1.0}}}, [], "train.optim.momentum: value 1.0: AdamW's momentum (its beta1) must be below 1"),
    "frozen_fm size": ({"model": {"frozen_fm": {"enabled": True}}, "dataset": {"augmentation": {"eval_spatial_size": [672, 672]}}}, [], "dataset.augmentation.eval_spatial_size: [672, 672]: with model.frozen_fm each side must be a multiple of 64"),
    "trt batch order": ({"gen_trt_engine": {"tensorrt": {"opt_batch_size": 8}}}, [], "gen_trt_engine.tensorrt.opt_batch_size: batch sizes must satisfy"),
    "bad override value": ({}, ["train.num_epochs=[1"], "override 'train.num_epochs=[1': value is not valid YAML"),
    "override without =": ({}, ["train.num_epochs"], "override 'train.num_epochs': expected key=value"),
    "override unknown key": ({}, ["train.num_epoch=3"], "train.num_epoch: unknown key (did you mean 'train.num_epochs'?)"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FIELD_CASES))
def test_bad_spec_one_line_exit_2(cli, write_spec, case):
    data, overrides, expected = FIELD_CASES[case]
    spec = write_spec(data)
    result = cli("validate", "-e", spec, *overrides)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert len(result.error_lines) == 1, result.err
    assert expected in result.error_lines[0]
    if not case.startswith(("bad override", "override without")):
        assert result.error_lines[0].startswith(f"error: {spec}: ")


def test_frozen_fm_at_640_validates(cli, write_spec):
    spec = write_spec({"model": {"frozen_fm": {"enabled": True, "backbone": "radio_v2-b"}},
                       "dataset": {"augmentation": {"train_spatial_size": [640, 640], "eval_spatial_size": [640, 640]}}})  # fmt: skip
    assert cli("validate", "-e", spec, "export.input_width=640").code == 0


def test_all_problems_reported_together(cli, write_spec):
    spec = write_spec({"model": {"num_querie": 1, "hidden_dim": "x"}, "train": {"precision": "fp8"}})
    result = cli("validate", "-e", spec, "dataset.batch_size=0")
    assert result.code == 2
    assert len(result.error_lines) == 4
    joined = "\n".join(result.error_lines)
    for field in ("model.num_querie", "model.hidden_dim", "train.precision", "dataset.batch_size"):
        assert field in joined


def test_rule_skipped_when_its_field_is_already_bad(cli, write_spec):
    spec = write_spec({"model": {"num_feature_levels": "three"}})
    result = cli("validate", "-e", spec)
    assert len(result.error_lines) == 1
    assert "expected int" in result.error_lines[0]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("train", "dataset.train_data_sources[0].image_dir: required for train but not set"),
        ("evaluate", "evaluate.checkpoint: required for evaluate but not set (set evaluate.checkpoint or evaluate.trt_engine)"),
        ("inference", "dataset.infer_data_sources.image_dir[0]: required for inference but not set"),
        ("export", "export.onnx_file: required for export but not set"),
        ("gen_trt_engine", "gen_trt_engine.trt_engine: required for gen_trt_engine but not set"),
        ("distill", "distill.pretrained_teacher_model_path: required for distill but not set"),
    ],
)  # fmt: skip
def test_required_values_per_action(cli, write_spec, action, expected):
    result = cli("validate", "-e", write_spec({}), "--action", action)
    assert result.code == 2
    assert any(expected in line for line in result.error_lines), result.err
    assert "Traceback" not in result.err


def test_required_only_for_the_action_that_reads_it(cli, write_spec):
    # evaluate.checkpoint is ??? by default; it does not concern train.
    spec = write_spec(
        {
            "dataset": {
                "train_data_sources": [{"image_dir": "a", "json_file": "b.json"}],
                "val_data_sources": {"image_dir": "a", "json_file": "c.json"},
            }
        }
    )
    assert cli("validate", "-e", spec, "--action", "train").code == 0
    assert cli("validate", "-e", spec, "--action", "evaluate").code == 2


def test_trt_engine_satisfies_evaluate(cli, write_spec):
    spec = write_spec(
        {
            "evaluate": {"trt_engine": "m.onnx"},
            "dataset": {"test_data_sources": {"image_dir": "a", "json_file": "t.json"}},
        }
    )
    assert cli("validate", "-e", spec, "--action", "evaluate").code == 0


# ------------------------------------------------------------------------------ the spec file
def test_missing_spec_file(cli, tmp_path):
    result = cli("validate", "-e", tmp_path / "nope.yaml")
    assert result.code == 2
    assert result.error_lines == [f"error: {tmp_path / 'nope.yaml'}: spec file not found"]


def test_spec_is_a_directory(cli, tmp_path):
    result = cli("validate", "-e", tmp_path)
    assert result.code == 2
    assert "is a directory" in result.error_lines[0]


def test_unreadable_spec_file(cli, tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00model: 1")
    result = cli("validate", "-e", path)
    assert result.code == 2
    assert len(result.error_lines) == 1
    assert f"{path}: cannot read spec file" in result.error_lines[0]


def test_malformed_yaml_names_the_line(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  backbone: resnet_18\n  num_queries: [1, 2\ntrain:\n  seed: 1\n")
    result = cli("validate", "-e", path)
    assert result.code == 2
    assert len(result.error_lines) == 1
    assert result.error_lines[0].startswith(f"error: {path}:4: malformed YAML")


def test_malformed_json_names_the_line(cli, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "model": {\n    "backbone": "resnet_18",\n  }\n}\n')
    result = cli("validate", "-e", path)
    assert result.code == 2
    assert result.error_lines[0].startswith(f"error: {path}:4: malformed JSON")


def test_spec_not_a_mapping(cli, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- train\n")
    result = cli("validate", "-e", path)
    assert result.code == 2
    assert result.error_lines == [f"error: {path}: the spec must be a mapping of sections, got a list"]


def test_debug_shows_traceback(tmp_path):
    from rtdetr.cli import main
    from rtdetr.errors import SpecError

    path = tmp_path / "s.yaml"
    path.write_text("model:\n  num_querie: 3\n")
    with pytest.raises(SpecError):
        main(["--debug", "validate", "-e", str(path)])


def test_an_empty_source_list_is_reported_once(cli, write_spec):
    spec = write_spec(
        {"dataset": {"train_data_sources": [], "val_data_sources": {"image_dir": "a", "json_file": "c"}}}
    )
    result = cli("validate", "-e", spec, "--action", "train")
    assert result.code == 2
    assert result.error_lines == [
        f"error: {spec}: dataset.train_data_sources: required for train but not set"
    ]
