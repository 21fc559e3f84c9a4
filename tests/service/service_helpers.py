"""Helpers of the service tests: the API client wrapper, fake job commands, settings for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import select

from rtdetr.service import db
from rtdetr.service.app import create_app
from rtdetr.service.settings import Settings

FAKE_JOB = Path(__file__).parent / "fake_job.py"
ORG = "/api/v1/orgs/test"

# a model and spec small enough for real runs of the toolkit behind the server (64x64, one epoch)
TINY_MODEL = {
    "backbone": "resnet_18vd", "hidden_dim": 32, "feat_channels": [32, 32, 32], "nheads": 2,
    "dim_feedforward": 64, "dec_dim_feedforward": 64, "dec_layers": 1, "num_queries": 10,
    "dn_number": 4, "expansion": 0.5, "num_select": 10,
}  # fmt: skip
SMALL_SPEC = {
    "model": TINY_MODEL,
    "dataset": {
        "batch_size": 8, "workers": 0, "pin_memory": False,
        "augmentation": {"train_spatial_size": [64, 64], "eval_spatial_size": [64, 64], "multi_scales": [],
                         "distortion_prob": 0.0, "iou_crop_prob": 0.0},
    },
    "train": {"num_epochs": 1, "activation_checkpoint": False, "seed": 1},
}  # fmt: skip


def fake_command(mode: str):
    """A Settings.command running fake_job.py in ``mode``."""
    return lambda action, spec: [sys.executable, str(FAKE_JOB), mode, action, str(spec)]


class Server:
    """A running app: ``client`` sends the token; helpers for the usual calls."""

    def __init__(self, client: TestClient, settings: Settings):
        self.client, self.settings = client, settings

    def post(self, path: str, **kwargs):
        return self.client.post(ORG + path, **kwargs)

    def get(self, path: str, **kwargs):
        return self.client.get(ORG + path, **kwargs)

    def dataset(self, name: str = "train", **body) -> str:
        r = self.post(
            "/datasets", json={"name": name, "path": "squares", "json_file": f"{name}.json", **body}
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def experiment(self, **body) -> str:
        train, val = self.dataset("train"), self.dataset("val")
        body = {"name": "squares", "train_datasets": [train], "eval_dataset": val, **body}
        r = self.post("/experiments", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def submit(
        self, experiment: str, action: str, specs: dict | None = None, parent: str | None = None
    ) -> str:
        body = {"action": action, "specs": specs or {}, "parent_job_id": parent}
        r = self.post(f"/experiments/{experiment}/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def job(self, experiment: str, job: str) -> dict:
        r = self.get(f"/experiments/{experiment}/jobs/{job}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, experiment: str, job: str, statuses, timeout: float = 15.0) -> dict:
        """The job once its status is one of ``statuses``; fails after ``timeout`` seconds."""
        statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(experiment, job)
            if info["status"] in statuses:
                return info
            assert time.monotonic() < deadline, f"job {job} still {info['status']} after {timeout} s: {info}"
            time.sleep(0.05)


def make_settings(data_dir: Path, **kwargs) -> Settings:
    options = {
        "poll_interval": 0.05,
        "cancel_grace": 0.5,
        "max_jobs": 2,
        "gpus": [],
        "command": fake_command("ok"),
    }
    return Settings(data_dir=data_dir, **{**options, **kwargs})


@contextlib.contextmanager
def live_server(settings: Settings, executor=None) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1 (a free port) in a thread; yields its address. On the way
    out the server stops and the jobs it left running are killed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings, executor)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start within 20 s"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        kill_active_jobs(app)
        assert not thread.is_alive(), "the server did not stop within 15 s"


def kill_active_jobs(app) -> None:
    """End the process groups of the jobs a test left running (the server leaves them running)."""
    with app.state.sessions() as session:
        for job in session.scalars(select(db.Job).where(db.Job.status.in_(db.ACTIVE))):
            if job.handle and job.handle.isdigit():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(job.handle), signal.SIGKILL)
