"""Jobs through the API with a stand-in task (tests/service/fake_job.py): the queue, status with
KPIs, a child's inputs from its parent, logs and files, cancel, errors, a server restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastapi.testclient import TestClient
from service_helpers import Server, fake_command, make_settings

from rtdetr.service.app import create_app


def test_a_bad_spec_is_a_422_listing_every_problem_and_no_job_is_created(server):
    experiment = server.experiment()
    specs = {
        "train": {"num_epochs": 0, "num_epoch": 3},
        "model": {"backbone": "resnet_1000"},
        "dataset": {"batch_size": "four"},
    }
    r = server.post(f"/experiments/{experiment}/jobs", json={"action": "train", "specs": specs})
    assert r.status_code == 422, r.text
    problems = r.json()["detail"]
    for field in ("train.num_epochs", "train.num_epoch", "model.backbone", "dataset.batch_size"):
        assert sum(p.startswith(f"{field}:") for p in problems) == 1, (field, problems)
    assert server.get(f"/experiments/{experiment}/jobs").json() == []
    assert not list(server.settings.jobs_dir.iterdir())
    r = server.post(f"/experiments/{experiment}/jobs", json={"action": "fly", "specs": {}})
    assert r.status_code == 422 and r.json()["detail"][0].startswith("action:")
    r = server.post(f"/experiments/{experiment}/jobs", json={"action": "evaluate", "specs": {}})
    assert r.status_code == 422  # no checkpoint and no parent to take one from
    assert any(p.startswith("evaluate.checkpoint") for p in r.json()["detail"]), r.json()


def test_a_train_job_is_filled_in_runs_and_reports_epochs_and_kpis(server):
    experiment = server.experiment()
    server.settings.command = fake_command("train")
    job = server.submit(experiment, "train", {"train": {"num_epochs": 3, "results_dir": "/elsewhere"}})
    info = server.wait(experiment, job, "Done")
    assert info["epoch"] == 2 and info["max_epoch"] == 3 and info["eta"] == "0:00:01"
    assert info["kpi"]["val_mAP50"] == 0.6 and info["exit_code"] == 0
    job_dir = server.settings.jobs_dir / job
    spec = info["specs"]
    assert spec["results_dir"] == str(job_dir) and spec["train"]["results_dir"] is None
    squares = server.settings.data_dir / "squares"
    assert spec["dataset"]["train_data_sources"] == [
        {"image_dir": str(squares / "images"), "json_file": str(squares / "train.json")}
    ]
    assert spec["dataset"]["val_data_sources"]["json_file"] == str(squares / "val.json")
    assert spec["dataset"]["num_classes"] == 3 and spec["train"]["num_epochs"] == 3
    assert (job_dir / "spec.yaml").is_file()
    assert "fake train (train) started" in server.get(f"/experiments/{experiment}/jobs/{job}/logs").text
    files = {f["path"] for f in server.get(f"/experiments/{experiment}/jobs/{job}:list_files").json()}
    assert {"spec.yaml", "job.log", "train/status.json", "train/model_epoch_001.pth"} <= files
    r = server.get(
        f"/experiments/{experiment}/jobs/{job}:download", params={"file": "train/model_epoch_001.pth"}
    )
    assert r.status_code == 200 and r.content == b"weights"
    assert [j["id"] for j in server.get(f"/experiments/{experiment}/jobs").json()] == [job]
    curves = server.get(f"/experiments/{experiment}/jobs/{job}/metrics").json()
    assert [(row["epoch"], row["val_mAP50"]) for row in curves] == [(0, 0.5), (1, 0.7), (2, 0.6)]


def test_children_take_the_parents_best_checkpoint_and_onnx_file(server):
    experiment = server.experiment()
    server.settings.command = fake_command("train")
    train = server.submit(experiment, "train")
    server.wait(experiment, train, "Done")
    best = str(server.settings.jobs_dir / train / "train" / "model_epoch_001.pth")  # val_mAP50 0.7

    server.settings.command = fake_command("ok")
    evaluate = server.submit(experiment, "evaluate", parent=train)
    spec = server.wait(experiment, evaluate, "Done")["specs"]
    assert spec["evaluate"]["checkpoint"] == best
    assert spec["dataset"]["test_data_sources"]["json_file"].endswith("val.json")  # no test dataset: val

    server.settings.command = fake_command("export")
    export = server.submit(
        experiment, "export", {"export": {"input_width": 64, "input_height": 64}}, parent=train
    )
    spec = server.wait(experiment, export, "Done")["specs"]
    onnx_file = str(server.settings.jobs_dir / export / "export" / "model.onnx")
    assert spec["export"]["checkpoint"] == best and spec["export"]["onnx_file"] == onnx_file

    server.settings.command = fake_command("ok")
    quantize = server.submit(experiment, "quantize", parent=export)
    spec = server.wait(experiment, quantize, "Done")["specs"]
    assert spec["quantize"]["onnx_file"] == onnx_file
    assert spec["quantize"]["output_file"] == str(
        server.settings.jobs_dir / quantize / "quantize" / "model_int8.onnx"
    )
    assert spec["quantize"]["cal_image_dir"] == [str(server.settings.data_dir / "squares" / "images")]
    evaluate_onnx = server.submit(experiment, "evaluate", parent=export)
    assert server.wait(experiment, evaluate_onnx, "Done")["specs"]["evaluate"]["trt_engine"] == onnx_file

    distill = server.submit(experiment, "distill", {"distill": {"bindings": [
        {"teacher_module_name": "srcs", "student_module_name": "srcs"}]}}, parent=train)  # fmt: skip
    spec = server.wait(experiment, distill, "Done")["specs"]
    assert spec["distill"]["pretrained_teacher_model_path"] == best


def test_a_child_of_an_unfinished_or_unknown_parent_is_refused(server):
    experiment = server.experiment()
    server.settings.command = fake_command("sleep")
    train = server.submit(experiment, "train")
    server.wait(experiment, train, "Running")
    r = server.post(f"/experiments/{experiment}/jobs", json={"action": "evaluate", "parent_job_id": train})
    assert r.status_code == 409 and "Running" in r.json()["detail"]
    r = server.post(f"/experiments/{experiment}/jobs", json={"action": "evaluate", "parent_job_id": "nope"})
    assert r.status_code == 422 and r.json()["detail"][0].startswith("parent_job_id:")
    server.post(f"/experiments/{experiment}/jobs/{train}:cancel")
    server.wait(experiment, train, "Canceled")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is gone too


def test_cancel_ends_a_running_job_and_its_process_group_within_5_seconds(server):
    experiment = server.experiment()
    server.settings.command = fake_command("stubborn")  # ignores SIGTERM: SIGKILL after the grace time
    job = server.submit(experiment, "train")
    info = server.wait(experiment, job, "Running")
    child = _child_pid(server, job)
    assert info["gpu"] is None  # no GPU here: the job runs on the CPU
    pgid = _handle(server, job)
    assert os.getpgid(child) == pgid
    start = time.monotonic()
    r = server.post(f"/experiments/{experiment}/jobs/{job}:cancel")
    assert r.status_code == 200 and r.json()["status"] == "Canceling"
    info = server.wait(experiment, job, "Canceled", timeout=5)
    assert time.monotonic() - start < 5
    assert not _alive(child) and not _alive(pgid)
    try:
        os.killpg(pgid, 0)
        group_left = True
    except ProcessLookupError:
        group_left = False
    assert not group_left
    r = server.post(f"/experiments/{experiment}/jobs/{job}:cancel")
    assert r.status_code == 409  # already over


def _child_pid(server, job: str) -> int:
    """The pid of the sleeping child of a fake job in sleep or stubborn mode, once it started."""
    path = server.settings.jobs_dir / job / "train" / "child.pid"
    deadline = time.monotonic() + 10
    while not path.is_file() or not path.read_text():
        assert time.monotonic() < deadline, "the fake job did not start its child"
        time.sleep(0.05)
    return int(path.read_text())


def _handle(server, job: str) -> int:
    """The job's process (group) id, once the scheduler recorded it."""
    from rtdetr.service import db

    deadline = time.monotonic() + 5
    while True:
        with server.client.app.state.sessions() as session:
            handle = session.get(db.Job, job).handle
        if handle is not None:
            return int(handle)
        assert time.monotonic() < deadline, "no process recorded for the job"
        time.sleep(0.05)


def test_a_queued_job_is_canceled_at_once_and_the_queue_respects_max_jobs(server):
    experiment = server.experiment()
    server.settings.command = fake_command("sleep")
    server.settings.max_jobs = 1
    first = server.submit(experiment, "train")
    server.wait(experiment, first, "Running")
    second = server.submit(experiment, "train")
    time.sleep(0.3)
    assert server.job(experiment, second)["status"] == "Pending"
    r = server.post(f"/experiments/{experiment}/jobs/{second}:cancel")
    assert r.status_code == 200 and r.json()["status"] == "Canceled"
    server.post(f"/experiments/{experiment}/jobs/{first}:cancel")
    server.wait(experiment, first, "Canceled")
    assert server.client.delete(f"/api/v1/orgs/test/experiments/{experiment}").status_code == 200
    assert not (server.settings.jobs_dir / first).exists()


def test_each_running_job_has_a_gpu_of_its_own(server):
    experiment = server.experiment()
    server.settings.command = fake_command("gpu")
    server.settings.gpus, server.settings.max_jobs = ["0", "1"], 2
    jobs = [server.submit(experiment, "train") for _ in range(3)]
    infos = [server.wait(experiment, job, "Done") for job in jobs]
    seen = [(server.settings.jobs_dir / job / "train" / "gpu.txt").read_text() for job in jobs]
    assert seen == [info["gpu"] for info in infos] and set(seen) == {"0", "1"}
    assert seen[0] != seen[1]  # the first two ran together, the third waited for a free GPU
    server.settings.gpus = []
    job = server.submit(experiment, "train")
    assert server.wait(experiment, job, "Done")["gpu"] is None
    assert (server.settings.jobs_dir / job / "train" / "gpu.txt").read_text() == ""  # the CPU: no GPU visible
    if "OMP_NUM_THREADS" not in os.environ:  # two jobs may share the CPU: each gets its share of the cores
        expected = str(max(1, (os.cpu_count() or 1) // 2))
        assert (server.settings.jobs_dir / job / "train" / "threads.txt").read_text() == expected


def test_a_failing_job_ends_in_error_with_its_last_status_line(server):
    experiment = server.experiment()
    server.settings.command = fake_command("fail")
    job = server.submit(experiment, "train")
    info = server.wait(experiment, job, "Error")
    assert info["exit_code"] == 1 and info["message"] == "boom" and info["status_message"] == "boom"
    assert (
        "Traceback: boom" in server.get(f"/experiments/{experiment}/jobs/{job}/logs", params={"tail": 1}).text
    )


def test_a_restarted_server_follows_live_jobs_and_marks_dead_ones(data_dir):
    settings = make_settings(data_dir, command=fake_command("short"))
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {settings.token}"}) as client:
        first = Server(client, settings)
        experiment = first.experiment()
        live = first.submit(experiment, "train")
        _handle(first, live)  # started with the command of the moment
        first.settings.command = fake_command("sleep")
        dead = first.submit(experiment, "train")
        first.wait(experiment, dead, "Running")
        _child_pid(first, dead)  # its STARTED line is written, its process recorded
        dead_pgid = _handle(first, dead)
    # the server is down; its jobs run on; one of them dies meanwhile
    os.killpg(dead_pgid, 9)
    time.sleep(0.2)
    settings = make_settings(data_dir)
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {settings.token}"}) as client:
        second = Server(client, settings)
        info = second.wait(experiment, dead, "Error", timeout=5)
        assert "out of the server's sight" in info["message"] and "Starting train." in info["message"]
        assert second.job(experiment, live)["status"] in ("Running", "Done")
        info = second.wait(experiment, live, "Done", timeout=10)
        assert info["exit_code"] is None and info["status_message"] == "train finished successfully."
        assert len(second.get(f"/experiments/{experiment}/jobs").json()) == 2


def test_an_automl_job_lists_its_trials_and_keeps_its_study_in_its_folder(server):
    experiment = server.experiment()
    server.settings.command = fake_command("automl")
    job = server.submit(experiment, "automl", {"automl": {"max_trials": 2, "parameters": ["train.optim.lr"]}})
    info = server.wait(experiment, job, "Done")
    assert info["specs"]["automl"]["max_trials"] == 2
    assert info["specs"]["dataset"]["train_data_sources"][0]["json_file"].endswith("train.json")
    assert [(t["number"], t["state"], t["value"]) for t in info["trials"]] == [
        (0, "COMPLETE", 0.4),
        (1, "PRUNED", 0.1),
    ]
    assert info["trials"][0]["params"] == {"train.optim.lr": 0.001}
    r = server.post(f"/experiments/{experiment}/jobs",
                    json={"action": "automl", "specs": {"automl": {"storage": "sqlite:////tmp/elsewhere.db"}}})  # fmt: skip
    assert r.status_code == 422 and any(p.startswith("automl.storage:") for p in r.json()["detail"])
