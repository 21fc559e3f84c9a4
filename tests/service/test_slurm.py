"""The Slurm executor: jobs through submitit's local executor (the cluster's path on this machine: a
pickled JobCommand, result files, cancel, a restarted server following its jobs), the sbatch script a
cluster gets (stand-ins for sbatch, sacct and scancel), and the walkthrough's train job for real."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from fastapi.testclient import TestClient  # noqa: E402
from service_helpers import SMALL_SPEC, Server, fake_command, make_settings  # noqa: E402
from sqlalchemy import select  # noqa: E402
from submitit.core import utils as submitit_utils  # noqa: E402

from rtdetr.errors import UserError  # noqa: E402
from rtdetr.service import db  # noqa: E402
from rtdetr.service.app import create_app  # noqa: E402
from rtdetr.service.executor import LocalExecutor, process_alive  # noqa: E402
from rtdetr.service.settings import Settings, default_command  # noqa: E402
from rtdetr.service.slurm import (  # noqa: E402
    Handle,
    JobCommand,
    SlurmExecutor,
    exit_code,
    local_parameters,
    make_executor,
    slurm_parameters,
)


@pytest.fixture
def slurm_server(data_dir):
    settings = make_settings(data_dir, executor="submitit-local")
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {settings.token}"}) as client:
        yield Server(client, settings)
    stop_active_jobs(app)


def stop_active_jobs(app) -> None:
    """Kill what the jobs a test left running still run (the server leaves them running)."""
    executor = app.state.scheduler.executor
    with app.state.sessions() as session:
        for job in session.scalars(select(db.Job).where(db.Job.status.in_(db.ACTIVE))):
            if job.handle:
                executor.cancel(job.handle, 0.0)


def _handle(server: Server, job: str) -> Handle:
    with server.client.app.state.sessions() as session:
        return Handle.parse(session.get(db.Job, job).handle)


def _command_pid(server: Server, job: str) -> int:
    """The process id of the task's command, once submitit's task started it."""
    job_dir = server.settings.jobs_dir / job
    deadline = time.monotonic() + 15
    while True:  # the task's pid file, and the command's own (fake_job.py's child)
        pid_files = list((job_dir / "submitit").glob("*.pid"))
        if pid_files and (job_dir / "train" / "child.pid").exists():
            return int(pid_files[0].read_text())
        assert time.monotonic() < deadline, "the job's command did not start within 15 s"
        time.sleep(0.05)


def test_a_job_runs_through_submitit_and_reaches_done_with_its_kpis_and_log(slurm_server):
    server = slurm_server
    experiment = server.experiment()
    server.settings.command = fake_command("train")
    job = server.submit(experiment, "train")
    info = server.wait(experiment, job, "Done")
    assert info["exit_code"] == 0 and info["kpi"]["val_mAP50"] == 0.6 and info["epoch"] == 2
    handle = _handle(server, job)
    assert handle.cluster == "local" and handle.folder == server.settings.jobs_dir / job / "submitit"
    assert submitit_utils.pickle_load(handle.result_file(0)) == ("success", 0)
    log = server.get(f"/experiments/{experiment}/jobs/{job}/logs").text
    assert "fake train (train) started" in log
    assert (server.settings.jobs_dir / job / "job.log").read_text() == log


def test_a_failing_job_reaches_error_with_its_message_and_exit_status(slurm_server):
    server = slurm_server
    experiment = server.experiment()
    server.settings.command = fake_command("fail")
    job = server.submit(experiment, "train")
    info = server.wait(experiment, job, "Error")
    assert info["exit_code"] == 1 and info["message"] == "boom"
    assert "Traceback: boom" in server.get(f"/experiments/{experiment}/jobs/{job}/logs").text


def test_cancel_ends_a_running_job_that_ignores_sigterm_within_5_seconds(slurm_server):
    server = slurm_server
    experiment = server.experiment()
    server.settings.command = fake_command("stubborn")  # ignores SIGTERM: SIGKILL after the grace time
    job = server.submit(experiment, "train")
    server.wait(experiment, job, "Running")
    pid = _command_pid(server, job)
    child = int((server.settings.jobs_dir / job / "train" / "child.pid").read_text())
    assert os.getpgid(child) == pid  # the command leads a process group of its own
    start = time.monotonic()
    r = server.post(f"/experiments/{experiment}/jobs/{job}:cancel")
    assert r.status_code == 200 and r.json()["status"] == "Canceling"
    server.wait(experiment, job, "Canceled", timeout=5)
    assert time.monotonic() - start < 5
    assert not process_alive(pid) and not process_alive(child)


def test_a_restarted_server_follows_and_cancels_the_jobs_of_the_one_before(data_dir):
    settings = make_settings(data_dir, executor="submitit-local", command=fake_command("short"))
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {settings.token}"}) as client:
        first = Server(client, settings)
        experiment = first.experiment()
        short = first.submit(experiment, "train")
        first.wait(experiment, short, "Running")
        first.settings.command = fake_command("sleep")
        sleeping = first.submit(experiment, "train")
        first.wait(experiment, sleeping, "Running")
        pid = _command_pid(first, sleeping)
    settings = make_settings(data_dir, executor="submitit-local")
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {settings.token}"}) as client:
        second = Server(client, settings)
        info = second.wait(experiment, short, "Done", timeout=10)
        assert info["exit_code"] == 0  # read from submitit's result file: not lost with the first server
        assert second.job(experiment, sleeping)["status"] == "Running"
        second.post(f"/experiments/{experiment}/jobs/{sleeping}:cancel")
        second.wait(experiment, sleeping, "Canceled", timeout=5)
        assert not process_alive(pid)
    stop_active_jobs(app)


def test_the_slurm_parameters_follow_the_settings(tmp_path):
    settings = Settings(
        data_dir=tmp_path, executor="slurm", slurm_partition="gpu", slurm_nodes=2, slurm_gpus_per_node=4,
        slurm_time_min=90, slurm_extra={"account": "vision", "cpus-per-task": 8},
    )  # fmt: skip
    assert settings.gpus == []  # a Slurm job's GPUs are not this machine's
    assert slurm_parameters(settings, "rtdetr-x") == {
        "name": "rtdetr-x", "nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4, "timeout_min": 90,
        "stderr_to_stdout": True, "slurm_partition": "gpu", "slurm_srun_args": ["--kill-on-bad-exit=1"],
        "slurm_additional_parameters": {"signal": "TERM@120", "account": "vision", "cpus-per-task": 8},
    }  # fmt: skip
    one = slurm_parameters(settings, "rtdetr-x", ranks=False)  # evaluate, export ...: one task, one GPU
    assert one["nodes"] == 1 and one["tasks_per_node"] == 1 and one["gpus_per_node"] == 1
    cpu = slurm_parameters(Settings(data_dir=tmp_path, executor="slurm"), "rtdetr-y")
    assert cpu["tasks_per_node"] == 1 and cpu["nodes"] == 1 and cpu["timeout_min"] == 24 * 60
    assert "gpus_per_node" not in cpu and "slurm_partition" not in cpu
    assert local_parameters(settings, "rtdetr-x") == {
        "name": "rtdetr-x", "nodes": 1, "tasks_per_node": 1, "timeout_min": 90, "stderr_to_stdout": True
    }  # fmt: skip


def _fake_slurm(folder: Path, monkeypatch) -> Path:
    """sbatch, srun, sacct and scancel stand-ins on PATH: sbatch and scancel write their arguments to
    the returned file, sacct reports the state written to ``folder/state``."""
    calls = folder / "calls"
    scripts = {
        "sbatch": f'echo "sbatch $*" >> {calls}\necho "Submitted batch job 4242"',
        "srun": "exit 0",
        "sacct": f'echo "JobID|State|NodeList"\necho "4242|$(cat {folder / "state"})|node[1-2]"',
        "scancel": f'echo "scancel $*" >> {calls}',
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_a_slurm_job_is_the_sbatch_script_of_the_settings_and_is_followed_and_canceled(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = _fake_slurm(bin_dir, monkeypatch)
    settings = Settings(
        data_dir=tmp_path / "data", executor="slurm", slurm_partition="gpu", slurm_nodes=2,
        slurm_gpus_per_node=4, slurm_time_min=90, slurm_extra={"account": "vision"},
    )  # fmt: skip
    executor = make_executor(settings)
    assert isinstance(executor, SlurmExecutor)
    job_dir = settings.jobs_dir / "abc"
    job_dir.mkdir(parents=True)
    command = ["python", "-m", "rtdetr.cli", "train", "-e", str(job_dir / "spec.yaml")]
    handle = executor.submit("abc", command, job_dir, {"CUDA_VISIBLE_DEVICES": "", "X": "1"})
    folder = job_dir / "submitit"
    assert handle == f"slurm|{folder}|4242|8"

    script = (folder / "4242_submission.sh").read_text()
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--time=90",
                 "--signal=TERM@120", "--account=vision", "--job-name=rtdetr-abc"):  # fmt: skip
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert "srun --unbuffered" in script and "--kill-on-bad-exit=1" in script
    task = submitit_utils.DelayedSubmission.load(folder / "4242_submitted.pkl").function
    assert task == JobCommand(command, str(job_dir), {"X": "1"})  # the GPUs are Slurm's to give

    evaluate_dir = settings.jobs_dir / "def"
    evaluate_dir.mkdir()
    command = ["python", "-m", "rtdetr.cli", "evaluate", "-e", str(evaluate_dir / "spec.yaml")]
    assert executor.submit("def", command, evaluate_dir, {}).endswith("|4242|1")  # one task
    assert "#SBATCH --nodes=1\n" in (evaluate_dir / "submitit" / "4242_submission.sh").read_text()

    executor.sacct_interval = 0.0
    (bin_dir / "state").write_text("RUNNING")
    assert executor.status(handle).running
    for rank in range(8):
        outcome = ("success", 0) if rank != 3 else ("error", "CommandFailed: the job's command ended with "
                                                             "exit status 143")  # fmt: skip
        submitit_utils.cloudpickle_dump(outcome, folder / f"4242_{rank}_result.pkl")
    state = executor.status(handle)
    assert not state.running and state.exit_code == 143

    executor.cancel(handle, grace=0.1)
    assert (folder / "4242.cancel").exists()
    expected = ["scancel --signal=TERM 4242", "scancel --signal=KILL 4242", "scancel 4242"]
    deadline = time.monotonic() + 5
    while calls.read_text().splitlines()[2:] != expected:  # after the two sbatch calls
        assert time.monotonic() < deadline, calls.read_text()
        time.sleep(0.05)


def test_a_slurm_job_killed_from_outside_ends_when_sacct_says_so(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_slurm(bin_dir, monkeypatch)
    executor = SlurmExecutor(Settings(data_dir=tmp_path / "data", executor="slurm"))
    executor.sacct_interval = 0.0
    folder = tmp_path / "job" / "submitit"
    folder.mkdir(parents=True)
    handle = str(Handle("slurm", folder, "4242", 2))
    (bin_dir / "state").write_text("PENDING")
    assert executor.status(handle).running
    (bin_dir / "state").write_text("CANCELLED by 1000")
    time.sleep(0.01)  # submitit skips a forced sacct call that comes within 1 ms of the one before
    state = executor.status(handle)
    assert not state.running and state.exit_code is None  # no result file: the exit status is unknown


def test_exit_status_of_the_tasks(tmp_path):
    h = Handle("local", tmp_path, "7", 2)
    assert Handle.parse(str(h)) == h and Handle.parse("slurm|/a|b|12|4") == Handle(
        "slurm", Path("/a|b"), "12", 4
    )
    submitit_utils.cloudpickle_dump(("success", 0), h.result_file(0))
    assert exit_code(h) is None
    submitit_utils.cloudpickle_dump(("success", 0), h.result_file(1))
    assert exit_code(h) == 0
    submitit_utils.cloudpickle_dump(("error", "RuntimeError: no spec"), h.result_file(1))
    assert exit_code(h) == 1


def test_settings_name_a_known_executor_and_sane_slurm_resources(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="'kubernetes' is not one of local, slurm, submitit-local"):
        Settings(data_dir=tmp_path, executor="kubernetes")
    with pytest.raises(UserError, match="slurm_nodes must be at least 1"):
        Settings(data_dir=tmp_path, executor="slurm", slurm_nodes=0)
    assert isinstance(make_executor(Settings(data_dir=tmp_path, gpus=[])), LocalExecutor)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="sbatch not found"):
        make_executor(Settings(data_dir=tmp_path, executor="slurm"))


@pytest.mark.slow
def test_the_walkthroughs_train_job_runs_through_submitit(slurm_server):
    server = slurm_server
    server.settings.command = default_command
    experiment = server.experiment(base_spec=SMALL_SPEC)
    job = server.submit(experiment, "train")
    info = server.wait(experiment, job, ("Done", "Error"), timeout=180)
    assert info["status"] == "Done", server.get(f"/experiments/{experiment}/jobs/{job}/logs").text
    assert info["exit_code"] == 0 and 0.0 <= info["kpi"]["val_mAP50"] <= 1.0
    files = {f["path"] for f in server.get(f"/experiments/{experiment}/jobs/{job}:list_files").json()}
    assert "train/model_epoch_000.pth" in files
    assert submitit_utils.pickle_load(_handle(server, job).result_file(0)) == ("success", 0)
