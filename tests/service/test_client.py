"""`rtdetr client` against a live server (uvicorn on 127.0.0.1) whose jobs are the stand-in task of
tests/service/fake_job.py: the remote client's commands, their output, and their errors."""

from __future__ import annotations

import json
import stat
import tarfile

import pytest
from service_helpers import fake_command, live_server, make_settings

from rtdetr.cli import main
from rtdetr.config import reference
from rtdetr.service.client import progress_line


@pytest.fixture
def live(data_dir, tmp_path, monkeypatch):
    """A live server, and the client's settings file in the test's folder (no login yet)."""
    for name in ("RTDETR_SERVER", "RTDETR_SERVICE_TOKEN", "RTDETR_ORG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RTDETR_CLIENT_CONFIG", str(tmp_path / "client.json"))
    settings = make_settings(data_dir, command=fake_command("train"))
    with live_server(settings) as url:
        yield url, settings


def client(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["client", *args])
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *args: str) -> str:
    code, out, err = client(capsys, *args)
    assert code == 0, err
    return out.strip()


def test_the_remote_client_commands_from_login_to_download(live, capsys, tmp_path, monkeypatch):
    url, settings = live
    assert settings.token.startswith("rtd_")  # a token never reads as a flag
    code, _, err = client(capsys, "--server", url, "--token", "wrong", "login")
    assert code == 2 and "server (401)" in err and "rtdetr client login --token" in err
    out = ok(capsys, "login", "--server", url, "--token", settings.token, "--org", "team")
    config = tmp_path / "client.json"
    assert str(config) in out and stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"server": url, "token": settings.token, "org": "team"}

    train = ok(capsys, "dataset-create", "--name", "train", "--path", "squares", "--json_file", "train.json")
    val = ok(capsys, "dataset-create", "--path", "squares", "--json_file", "val.json", "--json")
    val = json.loads(val)["id"]
    assert len(train) == 32 and " " not in train  # the id alone, for $(...)
    listing = ok(capsys, "list-datasets").splitlines()
    assert listing[0].split() == ["ID", "NAME", "IMAGES", "BOXES", "JSON_FILE"]
    assert listing[1].split()[:3] == [train, "train", "8"]
    experiment = ok(
        capsys, "experiment-create", "--name", "squares", "--network_arch", "rtdetr",
        "--train_datasets", train, "--eval_dataset", val,
        "--base_spec", json.dumps({"train": {"num_epochs": 3}}),
    )  # fmt: skip
    assert experiment in ok(capsys, "list-experiments")

    specs = json.loads(
        ok(capsys, "get-spec", "--action", "train", "--job_type", "experiment", "--id", experiment)
    )
    default = reference.default_spec()
    assert specs["dataset"].pop("num_classes") is None  # from the experiment's datasets
    assert default["dataset"].pop("num_classes") == 80 and specs == default
    specs["dataset"]["num_classes"] = None
    job = ok(
        capsys, "experiment-run-action", "--action", "train", "--id", experiment, "--specs", json.dumps(specs)
    )
    status = ok(capsys, "get-action-status", "--job_type", "experiment", "--id", experiment, "--job", job,
                "--wait", "--interval", "0.1", "--timeout", "20")  # fmt: skip
    assert status.startswith("Done") and "epoch 3/3" in status and "mAP50 0.6000" in status
    info = json.loads(ok(capsys, "--json", "get-action-status", "--id", experiment, "--job", job))
    assert info["status"] == "Done" and info["kpi"]["val_mAP50"] == 0.6
    assert info["specs"]["dataset"]["num_classes"] == 3  # get-spec's default spec, filled in by the server
    assert info["specs"]["dataset"]["train_data_sources"][0]["json_file"].endswith("train.json")
    assert job in ok(capsys, "list-jobs", "--id", experiment)
    assert "fake train (train) started" in ok(
        capsys, "job-logs", "--id", experiment, "--job", job, "--follow"
    )
    assert "train/model_epoch_001.pth" in ok(capsys, "list-files", "--id", experiment, "--job", job)

    monkeypatch.chdir(tmp_path)
    out = ok(capsys, "download", "--id", experiment, "--job", job, "--file", "train/model_epoch_001.pth")
    assert (tmp_path / "model_epoch_001.pth").read_bytes() == b"weights" and out == "model_epoch_001.pth"
    out = ok(capsys, "download", "--id", experiment, "--job", job, "--output", str(tmp_path / "out"))
    with tarfile.open(out) as tar:
        assert f"{job}/train/status.json" in tar.getnames()

    evaluate = ok(capsys, "experiment-run-action", "--action", "evaluate", "--id", experiment,
                  "--parent_job_id", job)  # fmt: skip
    assert ok(capsys, "get-action-status", "--id", experiment, "--job", evaluate, "--wait",
              "--interval", "0.1").startswith("Done")  # fmt: skip
    assert (
        "only train and distill jobs" in client(capsys, "job-pause", "--id", experiment, "--job", evaluate)[2]
    )


def test_client_errors_are_one_line_each_with_exit_status_2(live, capsys):
    url, settings = live
    base = ["--server", url, "--token", settings.token, "--org", "team"]
    train = ok(capsys, *base, "dataset-create", "--path", "squares", "--json_file", "train.json")
    experiment = ok(capsys, *base, "experiment-create", "--name", "x", "--train_datasets", train,
                    "--eval_dataset", train)  # fmt: skip
    bad = json.dumps({"train": {"num_epochs": -1, "optim": {"lr": "fast"}}, "nonsense": 1})
    code, out, err = client(capsys, *base, "experiment-run-action", "--action", "train", "--id", experiment,
                            "--specs", bad)  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) >= 3
    assert all(line.startswith("error: server (422): ") for line in lines)
    assert any("train.num_epochs" in line for line in lines) and any("nonsense" in line for line in lines)
    code, _, err = client(capsys, *base, "get-action-status", "--id", experiment, "--job", "nope")
    assert code == 2 and err.strip() == "error: server (404): no job nope"
    code, _, err = client(capsys, *base, "experiment-run-action", "--action", "train", "--id", experiment,
                          "--specs", "{not json")  # fmt: skip
    assert code == 2 and err.startswith("error: --specs: not JSON")
    code, _, err = client(capsys, "--server", "http://127.0.0.1:9", "--token", "t", "list-datasets")
    assert code == 2 and "cannot reach the server at http://127.0.0.1:9" in err
    code, _, err = client(capsys, *base, "experiment-create", "--name", "y", "--network_arch", "yolo",
                          "--train_datasets", train, "--eval_dataset", train)  # fmt: skip
    assert code == 2 and "--network_arch yolo" in err


def test_the_progress_line_shows_the_epochs_loss_map_and_eta():
    job = {"status": "Running", "epoch": 4, "max_epoch": 10, "eta": "0:05:00",
           "kpi": {"train_loss": 12.3456, "val_mAP50": 0.41234}, "status_message": "Train epoch 4 finished."}  # fmt: skip
    line = progress_line(job, width=10)
    assert line == "Running    [#####.....] epoch 5/10  loss 12.3456  mAP50 0.4123  ETA 0:05:00"
    done = progress_line({"status": "Error", "kpi": {}, "status_message": "boom"})
    assert done == "Error      boom"
