"""Pause, resume and retry of jobs, and a followed log, with the stand-in task's `epochs` mode
(tests/service/fake_job.py): five epochs, each checkpointed, going on from the checkpoints it finds."""

from __future__ import annotations

import time

from service_helpers import fake_command


def _epochs(server, experiment: str, job: str) -> list[int]:
    return [row["epoch"] for row in server.get(f"/experiments/{experiment}/jobs/{job}/metrics").json()]


def _act(server, experiment: str, job: str, action: str, expected: int = 200) -> dict:
    r = server.post(f"/experiments/{experiment}/jobs/{job}:{action}")
    assert r.status_code == expected, r.text
    return r.json()


def test_pause_then_resume_ends_with_the_epochs_of_an_uninterrupted_job(server):
    experiment = server.experiment()
    server.settings.command = fake_command("epochs")
    whole = server.submit(experiment, "train")
    server.wait(experiment, whole, "Done")
    job = server.submit(experiment, "train")
    deadline = time.monotonic() + 10
    while server.job(experiment, job)["epoch"] is None:  # paused once its first epoch is written
        assert time.monotonic() < deadline, "no epoch written"
        time.sleep(0.05)
    assert _act(server, experiment, job, "pause")["status"] in ("Pausing", "Paused")
    info = server.wait(experiment, job, "Paused", timeout=5)
    stopped_at = info["epoch"]
    assert stopped_at < 4 and info["exit_code"] == 143
    assert info["message"] == f"paused; resume goes on from model_epoch_{stopped_at:03d}.pth"
    r = server.post(
        f"/experiments/{experiment}/jobs/{job}:resume", json={"specs": {"train": {"num_epochs": 0}}}
    )
    assert r.status_code == 422 and "train.num_epochs" in r.text  # a changed spec is validated
    assert server.job(experiment, job)["status"] == "Paused"
    _act(server, experiment, job, "resume", expected=200)
    info = server.wait(experiment, job, "Done", timeout=10)
    assert _epochs(server, experiment, job) == _epochs(server, experiment, whole) == [0, 1, 2, 3, 4]
    assert info["epoch"] == 4 and info["exit_code"] == 0
    log = server.get(f"/experiments/{experiment}/jobs/{job}/logs", params={"tail": 1000}).text
    assert log.count("fake train (epochs) started") == 2 and "resumed by the user" in log
    assert f"epoch {stopped_at + 1}" in log.split("resumed by the user")[1]  # not run again from 0
    _act(server, experiment, job, "resume", expected=409)  # Done: nothing to resume


def test_only_train_and_distill_jobs_pause_and_a_queued_one_is_held(server):
    experiment = server.experiment()
    server.settings.command = fake_command("sleep")
    server.settings.max_jobs = 1
    running = server.submit(experiment, "evaluate", {"evaluate": {"checkpoint": "squares/model.pth"}})
    server.wait(experiment, running, "Running")
    assert "only train and distill jobs" in _act(server, experiment, running, "pause", 409)["detail"]
    server.settings.command = fake_command("ok")
    queued = server.submit(experiment, "train")
    info = _act(server, experiment, queued, "pause")
    assert info["status"] == "Paused" and info["message"] == "paused while queued"
    _act(server, experiment, running, "cancel")
    server.wait(experiment, running, "Canceled")
    time.sleep(0.3)
    assert server.job(experiment, queued)["status"] == "Paused"  # held while the slot was free
    assert _act(server, experiment, queued, "resume")["status"] in ("Resuming", "Running", "Done")
    server.wait(experiment, queued, "Done")


def test_retry_runs_a_failed_job_again_and_a_paused_job_can_be_canceled(server):
    experiment = server.experiment()
    server.settings.command = fake_command("fail")
    job = server.submit(experiment, "export", {"export": {"checkpoint": "squares/model.pth"}})
    server.wait(experiment, job, "Error")
    _act(server, experiment, job, "resume", 409)  # not paused
    server.settings.command = fake_command("ok")
    info = _act(server, experiment, job, "retry")
    assert info["status"] in ("Pending", "Running", "Done") and info["exit_code"] is None
    info = server.wait(experiment, job, "Done")
    assert info["message"] == "export finished successfully." and info["exit_code"] == 0
    _act(server, experiment, job, "retry", 409)  # Done: nothing to retry
    server.settings.command = fake_command("sleep")
    held = server.submit(experiment, "train")
    server.wait(experiment, held, "Running")
    _act(server, experiment, held, "pause")
    server.wait(experiment, held, "Paused", timeout=5)
    assert _act(server, experiment, held, "cancel")["status"] == "Canceled"


def test_a_followed_log_streams_until_the_job_ends(server):
    experiment = server.experiment()
    server.settings.command = fake_command("epochs")
    job = server.submit(experiment, "train")
    start = time.monotonic()
    with server.client.stream(
        "GET", f"/api/v1/orgs/test/experiments/{experiment}/jobs/{job}/logs", params={"follow": True}
    ) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert time.monotonic() - start >= 1.5  # it lasted while the job ran
    assert [f"epoch {e}" in text for e in range(5)] == [True] * 5
    assert server.job(experiment, job)["status"] == "Done"
    r = server.get(
        f"/experiments/{experiment}/jobs/{job}/logs", params={"follow": True, "tail": 1, "max_seconds": 5}
    )
    assert r.text == "epoch 4\n"  # an ended job: its tail, and the stream ends
