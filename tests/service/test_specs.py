"""The spec rules of the service on their own: merging, the parent's best checkpoint, path checks."""

from __future__ import annotations

import json

import pytest

from rtdetr.config import reference
from rtdetr.errors import SpecError
from rtdetr.service.specs import best_checkpoint, build_job_spec, deep_merge, path_problems


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"train": {"num_epochs": 2, "optim": {"lr": 0.1}}, "model": {"feat_strides": [8, 16, 32]}}
    over = {"train": {"optim": {"momentum": 0.8}}, "model": {"feat_strides": [8]}}
    merged = deep_merge(base, over)
    assert merged == {
        "train": {"num_epochs": 2, "optim": {"lr": 0.1, "momentum": 0.8}},
        "model": {"feat_strides": [8]},
    }
    assert base["train"]["optim"] == {"lr": 0.1}  # the inputs are left alone


def _status(folder, *lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "status.json").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_the_best_checkpoint_is_the_best_val_map50_that_was_saved(tmp_path):
    results = tmp_path / "train"
    _status(
        results,
        {"status": "RUNNING", "epoch": 0, "kpi": {"val_mAP50": 0.4}},
        {"status": "RUNNING", "epoch": 1, "kpi": {"val_mAP50": 0.9}},  # best, but not saved
        {"status": "RUNNING", "epoch": 2, "kpi": {"val_mAP50": 0.5}},
        {"status": "RUNNING", "epoch": 3, "kpi": {"train_loss": 1.0}},
    )
    for epoch in (0, 2, 3):
        (results / f"model_epoch_{epoch:03d}.pth").write_bytes(b"w")
    assert best_checkpoint(results) == results / "model_epoch_002.pth"
    _status(results, {"status": "RUNNING", "epoch": 3, "kpi": {"train_loss": 1.0}})  # no validation
    assert best_checkpoint(results) == results / "model_epoch_003.pth"  # the latest
    (results / "status.json").write_text('{"status": "RUNN')  # cut short
    assert best_checkpoint(results) == results / "model_epoch_003.pth"
    assert best_checkpoint(tmp_path / "none") is None


def test_path_rules(tmp_path):
    data, job = tmp_path / "data", tmp_path / "data" / "jobs" / "j1"
    job.mkdir(parents=True)
    (data / "elsewhere").symlink_to("/etc")
    spec = {
        "dataset": {
            "val_data_sources": {"image_dir": str(data / "a"), "json_file": str(data / "elsewhere" / "x.json")},
            "infer_data_sources": {"image_dir": [str(data / "imgs" / "*.png"), str(data / "*" / ".." / ".." / "*")]},
        },
        "train": {"pretrained_model_path": "~/model.pth"},
        "model": {"pretrained_backbone_path": str(data / ".service" / "token")},
        "export": {"onnx_file": str(data / "model.onnx")},
        "evaluate": {"checkpoint": "${export.onnx_file}"},  # checked once resolved
    }  # fmt: skip
    problems = path_problems(spec, "export", data, job)
    fields = sorted(p.split(":", 1)[0] for p in problems)
    assert fields == sorted(
        [
            "dataset.val_data_sources.json_file",  # a link out of the data folder
            "dataset.infer_data_sources.image_dir[1]",  # '..'
            "train.pretrained_model_path",  # ~ is outside
            "model.pretrained_backbone_path",  # the service's own folder
            "export.onnx_file",  # an output of the action outside the job's folder
        ]
    ), problems
    train = [p.split(":", 1)[0] for p in path_problems(spec, "train", data, job)]
    assert len(train) == 4 and "export.onnx_file" not in train  # for train, a path it does not write


def test_build_job_spec_lists_the_loaders_problems_and_the_paths_together(tmp_path):
    data, job = tmp_path / "data", tmp_path / "data" / "jobs" / "j1"
    with pytest.raises(SpecError) as caught:
        build_job_spec(
            "evaluate", {"evaluate": {"checkpoint": "/etc/x.pth", "conf_threshold": 2}}, {}, data, job, {}
        )
    problems = caught.value.problems
    assert any(p.startswith("evaluate.conf_threshold:") for p in problems)
    assert any(p.startswith("evaluate.checkpoint:") and "outside the data folder" in p for p in problems)
    assert any(p.startswith("dataset.test_data_sources") for p in problems)  # required by evaluate


def test_a_child_builds_its_train_parents_model_unless_its_spec_names_another(tmp_path):
    data, job = tmp_path / "data", tmp_path / "data" / "jobs" / "j2"
    checkpoint = data / "jobs" / "j1" / "train" / "model_epoch_000.pth"
    parent = {
        "checkpoint": str(checkpoint),
        "model": {"backbone": "resnet_18", "num_queries": 100, "num_select": 100},
    }
    default = reference.default_spec()

    sources = {role: [{"image_dir": "i", "json_file": f"{role}.json"}] for role in ("train", "val")}

    def built(action: str, specs: dict) -> dict:
        return build_job_spec(action, specs, {}, data, job, sources, 3, parent)

    for specs in ({}, {"model": default["model"]}):  # nothing, or get-spec's default model
        spec = built("evaluate", specs)
        assert spec["model"]["backbone"] == "resnet_18" and spec["model"]["num_queries"] == 100
        assert spec["evaluate"]["checkpoint"] == str(checkpoint)
    spec = built("evaluate", {"model": {"backbone": "resnet_34"}})  # named: kept
    assert (
        spec["model"]["backbone"] == "resnet_34"
        and spec["model"]["num_queries"] == default["model"]["num_queries"]
    )
    bindings = [{"teacher_module_name": "srcs", "student_module_name": "srcs", "criterion": "L2"}]
    spec = built("distill", {"distill": {"bindings": bindings}})
    assert (
        spec["distill"]["teacher"]["backbone"] == "resnet_18"
        and spec["distill"]["teacher"]["num_queries"] == 100
    )
    assert spec["distill"]["pretrained_teacher_model_path"] == str(checkpoint)
