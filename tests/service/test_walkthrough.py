"""The remote-client walkthrough of docs/service.md with the real toolkit behind a live server: the
shipped BCCD sample as datasets, an experiment, get-spec train, a 1-epoch train job, an evaluate
child on the parent's best checkpoint reporting test mAP, an export, and an inference on the ONNX
file, all through `rtdetr client` (the API checked alongside)."""

from __future__ import annotations

import json

import httpx
import pytest
from service_helpers import SMALL_SPEC, live_server, make_settings

from rtdetr.cli import main
from rtdetr.service.settings import default_command
from rtdetr.service.specs import best_checkpoint, deep_merge


@pytest.mark.slow
def test_the_remote_client_walkthrough_runs_the_toolkit_end_to_end(tmp_path, monkeypatch, capsys):
    data = tmp_path / "service"
    monkeypatch.setenv("RTDETR_CLIENT_CONFIG", str(tmp_path / "client.json"))
    assert main(["sample-data", str(data / "bccd")]) == 0
    settings = make_settings(
        data, command=default_command, max_jobs=2, poll_interval=0.2
    )  # evaluate || export

    def client(*args: str) -> str:
        capsys.readouterr()
        code = main(["client", *args])
        out, err = capsys.readouterr()
        assert code == 0, f"rtdetr client {' '.join(args)}: {err}"
        return out.strip()

    def wait(job: str) -> dict:
        client(
            "get-action-status",
            "--id",
            experiment,
            "--job",
            job,
            "--wait",
            "--interval",
            "0.5",
            "--timeout",
            "300",
        )
        return json.loads(client("--json", "get-action-status", "--id", experiment, "--job", job))

    with live_server(settings) as url:
        client("login", "--server", url, "--token", settings.token, "--org", "lab")
        datasets = {
            split: client(
                "dataset-create",
                "--dataset_type",
                "object_detection",
                "--dataset_format",
                "coco",
                "--name",
                f"bccd-{split}",
                "--path",
                "bccd",
                "--json_file",
                f"annotations/instances_{split}.json",
            )  # fmt: skip
            for split in ("train", "val", "test")
        }
        experiment = client(
            "experiment-create", "--network_arch", "rtdetr", "--name", "bccd",
            "--train_datasets", datasets["train"], "--eval_dataset", datasets["val"],
            "--test_dataset", datasets["test"],
        )  # fmt: skip

        specs = json.loads(
            client("get-spec", "--action", "train", "--job_type", "experiment", "--id", experiment)
        )
        specs = deep_merge(specs, SMALL_SPEC)  # as a user edits the default spec before running it
        train = client(
            "experiment-run-action", "--action", "train", "--id", experiment, "--specs", json.dumps(specs)
        )
        info = wait(train)
        assert info["status"] == "Done", client("job-logs", "--id", experiment, "--job", train)
        assert info["epoch"] == 0 and info["max_epoch"] == 1 and 0.0 <= info["kpi"]["val_mAP50"] <= 1.0
        assert info["specs"]["dataset"]["num_classes"] == 4  # BCCD's 3 classes and the background

        specs = json.loads(client("get-spec", "--action", "evaluate", "--id", experiment))
        specs["dataset"]["augmentation"]["eval_spatial_size"] = [64, 64]  # else the default spec as it is
        specs = json.dumps(specs)
        evaluate = client("experiment-run-action", "--action", "evaluate", "--id", experiment,
                          "--parent_job_id", train, "--specs", specs)  # fmt: skip
        size = json.dumps({"export": {"input_width": 64, "input_height": 64}})  # the default is 960x544
        export = client("experiment-run-action", "--action", "export", "--id", experiment, "--parent_job_id", train,
                        "--specs", size)  # fmt: skip
        info = wait(evaluate)
        assert info["status"] == "Done", client("job-logs", "--id", experiment, "--job", evaluate)
        best = best_checkpoint(data / "jobs" / train / "train")
        assert info["specs"]["evaluate"]["checkpoint"] == str(best)
        assert info["specs"]["model"]["hidden_dim"] == 32  # the parent's model section
        assert info["specs"]["dataset"]["test_data_sources"]["json_file"].endswith("instances_test.json")
        assert 0.0 <= info["kpi"]["test_mAP"] <= 1.0

        info = wait(export)
        assert info["status"] == "Done", client("job-logs", "--id", experiment, "--job", export)
        onnx = info["specs"]["export"]["onnx_file"]
        assert onnx.startswith(str(data / "jobs" / export)) and onnx.endswith(".onnx")

        inference = client("experiment-run-action", "--action", "inference", "--id", experiment,
                           "--parent_job_id", export)  # fmt: skip
        info = wait(inference)
        assert info["status"] == "Done", client("job-logs", "--id", experiment, "--job", inference)
        assert info["specs"]["inference"]["trt_engine"] == onnx  # the exported model, in ONNX Runtime
        files = client("list-files", "--id", experiment, "--job", inference)
        assert "inference/status.json" in files and ".jpg" in files

        api = httpx.Client(
            base_url=f"{url}/api/v1/orgs/lab", headers={"Authorization": f"Bearer {settings.token}"}
        )
        jobs = api.get(f"/experiments/{experiment}/jobs").json()
        assert [(j["action"], j["parent_id"], j["status"]) for j in jobs] == [
            ("train", None, "Done"), ("evaluate", train, "Done"), ("export", train, "Done"),
            ("inference", export, "Done"),
        ]  # fmt: skip
        curves = api.get(f"/experiments/{experiment}/jobs/{train}/metrics").json()
        assert [row["epoch"] for row in curves] == [0] and "train_loss" in curves[0]
