"""`rtdetr serve`: uvicorn on 127.0.0.1, the token it creates, a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx

from rtdetr.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_on_127_0_0_1_with_the_token_it_created(tmp_path):
    port, data = _free_port(), tmp_path / "data"
    command = [sys.executable, "-m", "rtdetr.cli", "serve", "--port", str(port), "--data-dir", str(data)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                health = httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not answer within 20 s"
                time.sleep(0.1)
        assert health.json()["status"] == "ok"
        token = (data / ".service" / "token").read_text().strip()
        assert httpx.get(f"{base}/orgs/me/experiments", timeout=5).status_code == 401
        r = httpx.get(f"{base}/orgs/me/experiments", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert r.status_code == 200 and r.json() == []
        assert (data / ".service" / "service.db").is_file()
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    assert process.returncode in (0, -signal.SIGTERM), out  # uvicorn ends by its signal, once shut down
    assert "Application shutdown complete" in out
    assert str(data / ".service" / "token") in out


def test_serve_refuses_a_bad_port(capsys):
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
