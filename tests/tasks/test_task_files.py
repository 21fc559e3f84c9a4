"""What a task may write: never one of its inputs, only the names it owns in a results folder of its
own, and a rerun removes only its own partial files."""

from __future__ import annotations

import json

import pytest
import torch

import rtdetr
from rtdetr.common.status import read_status
from rtdetr.model import build_model
from rtdetr.model.checkpoint import ModelMetadata, save_checkpoint
from rtdetr.tasks.runner import check_task_files, task_results_dir

TINY = dict(
    backbone="resnet_18vd", num_queries=10, hidden_dim=32, feat_channels=[32, 32, 32], nheads=4,
    dim_feedforward=64, dec_dim_feedforward=64, dec_layers=1, dn_number=0, expansion=0.5,
)  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model's checkpoint (no training)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model_epoch_000.pth"
    meta = ModelMetadata(model={**TINY, "num_select": 10}, num_classes=3, input_size=[64, 64])
    return save_checkpoint(path, build_model(num_classes=3, **TINY), meta)


@pytest.fixture
def empty_spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("{}\n")
    return path


def _one_error(result) -> str:
    assert result.code == 2, result.err
    assert len(result.error_lines) == 1, result.err
    assert "Traceback" not in result.err
    return result.error_lines[0]


# ------------------------------------------------------------------------ outputs are not inputs
def test_export_never_writes_over_its_checkpoint(cli, checkpoint, empty_spec, tmp_path):
    before = checkpoint.read_bytes()
    line = _one_error(
        cli("export", "-e", empty_spec, f"export.checkpoint={checkpoint}", f"export.onnx_file={checkpoint}",
            "export.overwrite=true", "export.input_width=64", "export.input_height=64",
            f"results_dir={tmp_path / 'results'}")
    )  # fmt: skip
    assert "export.onnx_file" in line and "export.checkpoint" in line, line
    assert checkpoint.read_bytes() == before
    assert not (checkpoint.parent / "labels.txt").exists()
    assert not (checkpoint.parent / "nvinfer_config.txt").exists()
    status = read_status(tmp_path / "results" / "export")
    assert status[-1]["status"] == "FAILURE" and "export.checkpoint" in status[-1]["message"]


def test_a_link_to_an_input_is_the_input(cli, checkpoint, empty_spec, tmp_path):
    link = tmp_path / "model.onnx"
    link.symlink_to(checkpoint)
    before = checkpoint.read_bytes()
    line = _one_error(
        cli("export", "-e", empty_spec, f"export.checkpoint={checkpoint}", f"export.onnx_file={link}",
            "export.overwrite=true", f"results_dir={tmp_path / 'results'}")
    )  # fmt: skip
    assert "export.checkpoint" in line
    assert checkpoint.read_bytes() == before


def test_deepstream_files_beside_the_onnx_file_are_outputs_too(cli, checkpoint, empty_spec, tmp_path):
    classmap = tmp_path / "labels.txt"
    classmap.write_text("a\nb\nc\n")
    line = _one_error(
        cli("export", "-e", empty_spec, f"export.checkpoint={classmap}", f"export.onnx_file={tmp_path / 'x.onnx'}",
            f"results_dir={tmp_path / 'results'}")
    )  # fmt: skip
    assert "labels.txt" in line and "export.checkpoint" in line
    assert classmap.read_text() == "a\nb\nc\n"


@pytest.mark.parametrize(
    ("task", "overrides", "field"),
    [
        ("quantize", ["quantize.onnx_file=A", "quantize.output_file=A", "quantize.overwrite=true",
                      "quantize.cal_image_dir=[imgs]"], "quantize.output_file"),
        ("gen_trt_engine", ["gen_trt_engine.onnx_file=A", "gen_trt_engine.trt_engine=B",
                            "gen_trt_engine.calibration.cal_cache_file=A"], "gen_trt_engine.calibration.cal_cache_file"),
        ("gen_trt_engine", ["gen_trt_engine.onnx_file=A", "gen_trt_engine.trt_engine=B",
                            "gen_trt_engine.timing_cache=B"], "gen_trt_engine.trt_engine"),
        ("evaluate", ["evaluate.checkpoint=A", "evaluate.results_dir=R",
                      "dataset.test_data_sources.json_file=R/results.json",
                      "dataset.test_data_sources.image_dir=imgs"], "evaluate's results.json"),
    ],
)  # fmt: skip
def test_every_task_refuses_an_output_that_is_an_input(
    cli, empty_spec, tmp_path, monkeypatch, task, overrides, field
):
    (tmp_path / "A").write_bytes(b"input")
    (tmp_path / "R").mkdir()
    (tmp_path / "R" / "results.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    line = _one_error(cli(task, "-e", empty_spec, *overrides, f"results_dir={tmp_path / 'results'}"))
    assert field in line, line
    assert (tmp_path / "A").read_bytes() == b"input"
    assert (tmp_path / "R" / "results.json").read_text() == "{}"


# --------------------------------------------------------------------------- results folders
def _evaluate(cli, empty_spec, folder, *extra):
    return cli("evaluate", "-e", empty_spec, "evaluate.checkpoint=missing.pth", f"evaluate.results_dir={folder}",
               "dataset.test_data_sources.json_file=missing.json", "dataset.test_data_sources.image_dir=imgs", *extra)  # fmt: skip


def test_a_task_refuses_the_folder_of_another_task(cli, empty_spec, tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    status = '{"date": "1/1/2026", "time": "1:2:3", "status": "STARTED", "verbosity": "INFO", "message": "Starting train."}\n'
    (folder / "status.json").write_text(status)
    (folder / "dataset_issues.log").write_text("train's log\n")
    line = _one_error(_evaluate(cli, empty_spec, folder))
    assert "holds the results of train" in line
    assert (folder / "status.json").read_text() == status
    assert (folder / "dataset_issues.log").read_text() == "train's log\n"
    assert not (folder / "experiment.yaml").exists()


def test_a_status_json_that_is_not_a_status_log_is_never_appended_to(cli, empty_spec, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "status.json").write_text('{"my": "json document",\n "not": "lines"}\n')
    before = (folder / "status.json").read_bytes()
    line = _one_error(_evaluate(cli, empty_spec, folder))
    assert "status.json line 1 is not JSON" in line
    assert (folder / "status.json").read_bytes() == before
    # a spec error for that folder does not append its FAILURE line there either
    result = _evaluate(cli, empty_spec, folder, "evaluate.conf_threshold=7")
    assert result.code == 2 and "conf_threshold" in result.err
    assert (folder / "status.json").read_bytes() == before


@pytest.mark.parametrize("task", ["evaluate", "inference"])
def test_a_user_folder_with_files_the_task_writes_is_refused(cli, empty_spec, tmp_path, task):
    folder = tmp_path / "user"
    (folder / "labels").mkdir(parents=True)
    (folder / "labels" / "a.txt").write_text("user labels\n")
    (folder / "results.json").write_text('{"mine": 1}\n')
    extra = (
        ["inference.checkpoint=missing.pth", "dataset.infer_data_sources.image_dir=[imgs]"]
        if task == "inference"
        else ["evaluate.checkpoint=missing.pth", "dataset.test_data_sources.json_file=m.json",
              "dataset.test_data_sources.image_dir=imgs"]
    )  # fmt: skip
    line = _one_error(cli(task, "-e", empty_spec, f"{task}.results_dir={folder}", *extra))
    assert "already holds" in line and ("labels" in line or "results.json" in line), line
    assert (folder / "labels" / "a.txt").read_text() == "user labels\n"
    assert (folder / "results.json").read_text() == '{"mine": 1}\n'
    assert not (folder / "status.json").exists() and not (folder / "experiment.yaml").exists()


def test_a_folder_of_unrelated_files_is_used_and_they_stay(cli, empty_spec, tmp_path, checkpoint):
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    onnx_file = tmp_path / "out" / "m.onnx"
    result = cli("export", "-e", empty_spec, f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}",
                 "export.input_width=64", "export.input_height=64", f"export.results_dir={folder}")  # fmt: skip
    assert result.code == 0, result.err
    assert (folder / "notes.txt").read_text() == "keep me\n"
    assert read_status(folder)[-1]["status"] == "SUCCESS"
    # the same task again in its own folder replaces its own files
    result = cli("export", "-e", empty_spec, f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}",
                 "export.input_width=64", "export.input_height=64", f"export.results_dir={folder}",
                 "export.overwrite=true")  # fmt: skip
    assert result.code == 0, result.err


# ------------------------------------------------------------------------------ partial files
def test_a_rerun_removes_its_own_partial_files_only(tmp_path):
    folder = tmp_path / "results" / "train"
    folder.mkdir(parents=True)
    ours = [
        ".model_epoch_003.pth.k2j3h4g5.tmp",
        ".model_epoch_003-EMA.pth.a_b_c_d_.tmp",
        ".experiment.yaml.abcdefgh.tmp",
    ]
    theirs = [
        ".new.onnx.export.tmp",
        ".model_epoch_003.pth.export.tmp",
        ".notes.txt.abcdefgh.tmp",
        "model.tmp",
    ]
    for name in ours + theirs:
        (folder / name).write_bytes(b"x" * 10)
    cfg = rtdetr.load_spec({"results_dir": str(tmp_path / "results")})
    assert task_results_dir(cfg, "train") == folder
    check_task_files("train", cfg, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(theirs)


def test_export_leaves_a_user_file_named_like_its_temporary_file(cli, checkpoint, empty_spec, tmp_path):
    user = tmp_path / ".new.onnx.export.tmp"
    user.write_text("user data\n")
    result = cli("export", "-e", empty_spec, f"export.checkpoint={checkpoint}", f"export.onnx_file={tmp_path / 'new.onnx'}",
                 "export.input_width=64", "export.input_height=64", f"results_dir={tmp_path / 'results'}")  # fmt: skip
    assert result.code == 0, result.err
    assert user.read_text() == "user data\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new.onnx.") and p != user]


# ------------------------------------------------------------------------- empty results_dir
def test_an_empty_results_dir_is_refused_and_nothing_is_written(cli, empty_spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("train", "-e", empty_spec, "results_dir=")
    assert result.code == 2
    assert any(line.startswith(f"error: {empty_spec}: results_dir: empty") for line in result.error_lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


# -------------------------------------------------------------------------- utility commands
@pytest.mark.parametrize("size", [["0", "0"], ["-32", "32"], ["100000", "100000"], ["65", "64"]])
def test_info_refuses_sizes_it_cannot_measure(cli, empty_spec, size):
    line = _one_error(cli("info", "-e", empty_spec, "--size", *size))
    assert line.startswith(f"error: --size {size[0]} {size[1]}: ")


def test_get_spec_to_an_unwritable_place_is_one_line(cli, tmp_path):
    assert "-o: " in _one_error(cli("get-spec", "--action", "train", "-o", "/proc/x"))
    assert "is a folder" in _one_error(cli("get-spec", "--action", "train", "-o", str(tmp_path)))
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert "is a file, not a folder" in _one_error(cli("get-spec", "--schema", "-o", str(blocked / "x.json")))


def test_info_counts_any_size_without_allocating_it(cli, empty_spec):
    result = cli("info", "-e", empty_spec, "model.backbone=resnet_18", "--size", "8192", "8192")
    assert result.code == 0, result.err
    assert "GFLOPs at 8192x8192" in result.out


# ------------------------------------------------------------------- unsafe weight files
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("where", ["pretrained_model", "pretrained_backbone", "convert"])
def test_a_file_that_would_run_code_is_refused_without_unsafe_advice(cli, tmp_path, where, empty_spec):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "x": _RunsCode(marker)}, evil)
    if where == "convert":
        result = cli("convert", "--original", evil, "--preset", "r18vd", "-o", tmp_path / "out.pth")
        field = "--original"
    else:
        from rtdetr.engine.model_setup import load_pretrained_model
        from rtdetr.errors import UserError
        from rtdetr.model.backbones import load_pretrained_backbone

        model = build_model(num_classes=3, **TINY)
        with pytest.raises(UserError) as info:
            if where == "pretrained_model":
                load_pretrained_model(model, evil)
            else:
                load_pretrained_backbone(model.backbone, evil)
        result = type(
            "R", (), {"code": 2, "err": f"error: {info.value}", "error_lines": [f"error: {info.value}"]}
        )
        field = (
            "train.pretrained_model_path" if where == "pretrained_model" else "model.pretrained_backbone_path"
        )
    line = _one_error(result)
    assert field in line and "weights_only" not in line and "rtdetr does not load" in line, line
    assert not marker.exists()


def test_the_status_of_a_refused_run_is_strict_json(cli, checkpoint, empty_spec, tmp_path):
    cli("export", "-e", empty_spec, f"export.checkpoint={checkpoint}", f"export.onnx_file={checkpoint}",
        f"results_dir={tmp_path / 'results'}")  # fmt: skip
    for line in (tmp_path / "results" / "export" / "status.json").read_text().splitlines():
        json.loads(line)
