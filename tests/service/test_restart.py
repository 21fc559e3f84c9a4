"""A server killed with SIGKILL while a job runs and two wait: after a restart on the same data
folder no job and no database row is lost, the running job is followed to its end, the queued ones
run, and each job ran exactly once."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
SERVE = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(HERE)!r})
from service_helpers import fake_command, make_settings
from rtdetr.service.app import serve
settings = make_settings(Path(sys.argv[1]), command=fake_command("epochs"), max_jobs=1, poll_interval=0.1)
serve(settings, port=int(sys.argv[2]))
"""


def start(data: Path) -> tuple[subprocess.Popen, httpx.Client]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(data), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "the server ended"
        try:
            httpx.get(f"{url}/api/v1/health", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the server did not answer within 30 s"
            time.sleep(0.05)
    token = (data / ".service" / "token").read_text().strip()
    return process, httpx.Client(
        base_url=f"{url}/api/v1/orgs/test", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def rows(data: Path) -> dict:
    with sqlite3.connect(data / ".service" / "service.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return {
            table: sorted(r[0] for r in con.execute(f"SELECT id FROM {table}"))
            for table in ("datasets", "experiments", "jobs")
        }


def wait_for(api: httpx.Client, path: str, check, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = api.get(path).json()
        if check(info):
            return info
        assert time.monotonic() < deadline, f"{path}: {info}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_server_killed_with_sigkill_loses_no_job_and_no_row(data_dir):
    server, api = start(data_dir)
    try:
        ids = [
            api.post("/datasets", json={"name": n, "path": "squares", "json_file": f"{n}.json"}).json()["id"]
            for n in ("train", "val")
        ]
        experiment = api.post(
            "/experiments", json={"name": "e", "train_datasets": [ids[0]], "eval_dataset": ids[1]}
        ).json()["id"]
        jobs = [
            api.post(f"/experiments/{experiment}/jobs", json={"action": "train"}).json()["id"]
            for _ in range(3)
        ]
        running = wait_for(api, f"/experiments/{experiment}/jobs/{jobs[0]}", lambda j: j["epoch"] is not None)
        assert running["status"] == "Running"
        assert [api.get(f"/experiments/{experiment}/jobs/{j}").json()["status"] for j in jobs[1:]] == [
            "Pending"
        ] * 2
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
    before = rows(data_dir)
    assert len(before["jobs"]) == 3 and len(before["datasets"]) == 2 and len(before["experiments"]) == 1
    with sqlite3.connect(data_dir / ".service" / "service.db") as con:
        handle = con.execute("SELECT handle FROM jobs WHERE id = ?", (jobs[0],)).fetchone()[0]
    os.killpg(int(handle), 0)  # the job outlived its server

    server, api = start(data_dir)
    try:
        for job in jobs:
            info = wait_for(
                api, f"/experiments/{experiment}/jobs/{job}", lambda j: j["status"] in ("Done", "Error")
            )
            assert info["status"] == "Done", info
        assert [r["epoch"] for r in api.get(f"/experiments/{experiment}/jobs/{jobs[0]}/metrics").json()] == [
            0, 1, 2, 3, 4,
        ]  # fmt: skip
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
    assert rows(data_dir) == before
    for job in jobs:
        log = (data_dir / "jobs" / job / "job.log").read_text()
        assert log.count("fake train (epochs) started") == 1, log  # none ran twice
