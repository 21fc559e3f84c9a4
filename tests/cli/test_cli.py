"""The `rtdetr` command: help, get-spec, tasks with their results directory and status lines."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from rtdetr.common.status import read_status
from rtdetr.config.reference import default_spec, markdown_reference

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["train", "evaluate", "inference", "export", "distill", "gen_trt_engine"]


def test_console_script_help_lists_tasks_and_utilities():
    out = subprocess.run(
        [sys.executable, "-m", "rtdetr.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in [*TASKS, "get-spec", "validate"]:
        assert re.search(rf"^\s+{name}\b", out, re.MULTILINE), name


def test_no_command_prints_help_and_exits_2(cli):
    result = cli()
    assert result.code == 2
    assert "usage: rtdetr" in result.out


def test_get_spec_json_and_yaml_agree(cli):
    as_json = json.loads(cli("-q", "get-spec", "--action", "train", "--format", "json").out)
    as_yaml = yaml.safe_load(cli("-q", "get-spec", "--action", "train").out)
    assert as_json == as_yaml == default_spec()


def test_get_spec_schema_validates_the_default_spec(cli):
    schema = json.loads(cli("-q", "get-spec", "--schema").out)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(default_spec(), schema)
    bad = default_spec()
    bad["model"]["num_queries"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    assert "train.optim.lr" in schema["x-automl-enabled-fields"]


def test_spec_reference_doc_is_current():
    doc = (ROOT / "docs" / "spec_reference.md").read_text()
    assert doc == markdown_reference(), (
        "docs/spec_reference.md is stale: run `rtdetr get-spec --markdown -o docs/spec_reference.md`"
    )


def test_spec_reference_lists_every_leaf_field():
    import dataclasses

    from rtdetr.config.reference import iter_fields
    from rtdetr.config.validate import unwrap_optional

    doc = markdown_reference()
    for path, _, tp in iter_fields():
        if path.startswith("distill.teacher.") or dataclasses.is_dataclass(unwrap_optional(tp)[0]):
            continue
        assert f"| `{path}` |" in doc, path


def _train_spec(tmp_path, **extra):
    spec = {
        "results_dir": str(tmp_path / "results"),
        "dataset": {
            "train_data_sources": [{"image_dir": "imgs", "json_file": "train.json"}],
            "val_data_sources": {"image_dir": "imgs", "json_file": "val.json"},
        },
        **extra,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_unimplemented_task_says_so_and_records_failure(cli, tmp_path, monkeypatch):
    """A task the package does not provide (every documented one is provided: distill is taken out
    here) is one line and a FAILURE record."""
    from rtdetr.tasks import TASK_MODULES

    monkeypatch.delitem(TASK_MODULES, "distill")
    task = "distill"
    bindings = [{"teacher_module_name": "srcs", "student_module_name": "srcs", "criterion": "IOU"}]
    spec = _train_spec(tmp_path, distill={"pretrained_teacher_model_path": "t.pth", "bindings": bindings})
    result = cli(task, "-e", spec)
    assert result.code == 2
    assert len(result.error_lines) == 1
    assert "not implemented yet" in result.error_lines[0]
    results = tmp_path / "results" / task
    lines = read_status(results)
    assert [line["status"] for line in lines] == ["STARTED", "FAILURE"]
    assert lines[1]["message"].startswith("Not implemented: ")
    saved = yaml.safe_load((results / "experiment.yaml").read_text())
    assert saved["results_dir"] == str(tmp_path / "results")
    assert saved["model"]["num_queries"] == 300  # the resolved spec, defaults filled in


def test_task_results_dir_rule(tmp_path):
    import rtdetr
    from rtdetr.tasks.runner import task_results_dir

    cfg = rtdetr.load_spec({"results_dir": "/r"})
    assert task_results_dir(cfg, "train") == Path("/r/train")
    assert task_results_dir(cfg, "distill") == Path("/r/distill")
    cfg = rtdetr.load_spec({"results_dir": "/r", "evaluate": {"results_dir": "/elsewhere"}})
    assert task_results_dir(cfg, "evaluate") == Path("/elsewhere")


def test_status_line_format(tmp_path):
    from rtdetr.common.status import StatusLogger

    status = StatusLogger(tmp_path, enabled=True)
    status.write("RUNNING", "epoch done", kpi={"train_loss": 1.5}, epoch=0, max_epoch=10)
    (line,) = read_status(tmp_path)
    assert re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}", line["date"])
    assert re.fullmatch(r"\d{1,2}:\d{1,2}:\d{1,2}", line["time"])
    assert line["status"] == "RUNNING" and line["verbosity"] == "INFO"
    assert line["kpi"] == {"train_loss": 1.5} and line["epoch"] == 0
    with pytest.raises(ValueError):
        status.write("DONE")
    # strict JSON: NaN and infinities as null, tensors as numbers
    import torch

    status.write("RUNNING", kpi={"val_loss": float("nan"), "x": float("inf"), "t": torch.tensor(2.5)})
    last = (tmp_path / "status.json").read_text().splitlines()[-1]
    strict = json.loads(last, parse_constant=lambda name: pytest.fail(f"{name} in status.json"))
    assert strict["kpi"] == {"val_loss": None, "x": None, "t": 2.5}


def test_status_written_by_rank_zero_only(tmp_path, monkeypatch):
    from rtdetr.common.status import StatusLogger

    monkeypatch.setenv("RANK", "1")
    StatusLogger(tmp_path).write("STARTED")
    assert not (tmp_path / "status.json").exists()


def test_bad_spec_records_configuration_error_when_results_dir_known(cli, tmp_path):
    spec = _train_spec(tmp_path, train={"num_epochs": 0})
    result = cli("train", "-e", spec)
    assert result.code == 2
    (line,) = read_status(tmp_path / "results" / "train")
    assert line["status"] == "FAILURE"
    assert line["message"].startswith("Configuration error: ")
    assert "train.num_epochs" in line["message"]


def test_bad_dry_run_spec_records_failure_in_dry_run_folder(cli, tmp_path):
    """A refused dry-run spec leaves a real run's status alone, like an accepted dry run."""
    spec = _train_spec(tmp_path, train={"num_epochs": 0, "is_dry_run": True})
    result = cli("train", "-e", spec)
    assert result.code == 2
    assert not (tmp_path / "results" / "train" / "status.json").exists()
    (line,) = read_status(tmp_path / "results" / "train" / "dry_run")
    assert line["status"] == "FAILURE" and "train.num_epochs" in line["message"]


def test_unwritable_results_dir_is_a_clear_error(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    spec = _train_spec(tmp_path, results_dir=str(blocker / "sub"))
    result = cli("train", "-e", spec)
    assert result.code == 2
    assert "cannot create results directory" in result.error_lines[0]
    assert "Traceback" not in result.err


def test_rank_zero_logging(monkeypatch, capsys):
    from rtdetr.log import setup_logging

    setup_logging(logging.INFO)
    logger = logging.getLogger("rtdetr.test")
    monkeypatch.setenv("RANK", "1")
    logger.info("from rank one")
    logger.warning("warning from rank one")
    monkeypatch.setenv("RANK", "0")
    logger.info("from rank zero")
    err = capsys.readouterr().err
    assert "from rank one" not in err.replace("warning from rank one", "")
    assert "warning from rank one" in err
    assert "from rank zero" in err


def test_quiet_and_verbose(cli, write_spec):
    spec = write_spec({})
    assert "is valid" in cli("validate", "-e", spec).err
    assert "is valid" not in cli("--quiet", "validate", "-e", spec).err
    assert "is valid" not in cli("validate", "-e", spec, "-q").err


def test_sigterm_stops_a_task_through_an_exception_outside_train():
    import signal

    from rtdetr.tasks.runner import Terminated, sigterm_raises

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="SIGTERM received: export stopped") as err, sigterm_raises("export"):
        signal.raise_signal(signal.SIGTERM)
    assert err.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) is before
    for task in ("train", "gen_trt_engine"):  # Lightning's handling; TensorRT's build is not Python
        with sigterm_raises(task):
            assert signal.getsignal(signal.SIGTERM) is before
    # not an Exception: no `except Exception` of a task takes it for an error of its own
    assert not isinstance(err.value, Exception)
