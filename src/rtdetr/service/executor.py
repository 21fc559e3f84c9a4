"""Running jobs: the Executor interface, the local executor, and the scheduler.

The database is the queue. The scheduler, a thread of the server, claims Pending jobs (one
conditional UPDATE each, see ``db.claim``) while fewer than ``max_jobs`` run, hands each to the
executor with a GPU slot (or the CPU), and records how each ends: Done (exit status 0), Error (with
the last status line or log line) or Canceled. On a start it reconciles the rows a previous server left
Running: a live process is watched again, a finished one is marked Done or Error by its status.json.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from rtdetr.common.status import read_status
from rtdetr.service import db
from rtdetr.service.settings import Settings
from rtdetr.service.specs import latest_checkpoint, task_dir

log = logging.getLogger(__name__)

LOG_FILE = "job.log"
SPEC_FILE = "spec.yaml"


@dataclass
class JobState:
    """What an executor knows of a job's process: running, or ended with an exit code (None when it
    ended out of sight, e.g. before a server restart)."""

    running: bool
    exit_code: int | None = None


class Executor(ABC):
    """Where jobs run. ``handle`` (a string kept in the job's row) identifies a submitted job."""

    @abstractmethod
    def submit(self, job_id: str, command: list[str], job_dir: Path, env: dict[str, str]) -> str:
        """Start ``command`` in ``job_dir`` (its output to job.log there); returns the handle."""

    @abstractmethod
    def status(self, handle: str) -> JobState:
        """Whether the job still runs."""

    @abstractmethod
    def cancel(self, handle: str, grace: float) -> None:
        """Stop the job: a polite signal, then, after ``grace`` seconds, a kill."""

    def logs(self, job_dir: Path, lines: int = 200) -> str:
        """The last ``lines`` lines of the job's output."""
        return tail(job_dir / LOG_FILE, lines)


def tail(path: Path, lines: int, block: int = 1 << 16, end: int | None = None) -> str:
    """The last ``lines`` lines of a text file (of its first ``end`` bytes), read from its end."""
    if not path.is_file() or lines <= 0:
        return ""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell() if end is None else min(end, fh.tell())
        data = b""
        while end > 0 and data.count(b"\n") <= lines:
            start = max(0, end - block)
            fh.seek(start)
            data = fh.read(end - start) + data
            end = start
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) + ("\n" if text.endswith("\n") else "")


def follow_file(path: Path, lines: int, active: Callable[[], bool], max_seconds: float,
           interval: float = 0.5) -> Iterator[bytes]:  # fmt: skip
    """The last ``lines`` lines of a log, then what is appended to it, until ``active()`` is False
    and the file is read to its end, or ``max_seconds`` have passed."""
    deadline = time.monotonic() + max_seconds
    position = path.stat().st_size if path.is_file() else 0
    first = tail(path, lines, end=position)
    if first:
        yield first.encode()
    while True:
        running = active()  # asked before the read: what the job writes last is read too
        chunk = b""
        if path.is_file():
            with path.open("rb") as fh:
                fh.seek(position)
                chunk = fh.read(1 << 20)
        if chunk:
            position += len(chunk)
            yield chunk
        if time.monotonic() > deadline or not (chunk or running):
            return
        if not chunk:
            time.sleep(interval)


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group is left (a zombie counts until it is reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, ended but not yet reaped, does not; one that is a child of
    this process is reaped here)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: os.kill is all there is


class LocalExecutor(Executor):
    """Each job is a process in a new session (its own process group, led by the job's process), so
    that a cancel reaches the job's workers too. The handle is the process id (= the group id)."""

    def __init__(self):
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def submit(self, job_id: str, command: list[str], job_dir: Path, env: dict[str, str]) -> str:
        with open(job_dir / LOG_FILE, "ab") as out:
            process = subprocess.Popen(
                command,
                cwd=job_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )
        with self._lock:
            self._children[process.pid] = process
        return str(process.pid)

    def status(self, handle: str) -> JobState:
        pid = int(handle)
        with self._lock:
            process = self._children.get(pid)
        if process is not None:
            code = process.poll()
            if code is None:
                return JobState(True)
            if group_alive(pid):  # the leader ended, some of its group did not: end them
                _kill_group(pid, signal.SIGKILL)
                return JobState(True)
            with self._lock:
                self._children.pop(pid, None)
            return JobState(False, code)
        # a process of an earlier server: its exit code is gone; once it ends, so does its group
        if process_alive(pid):
            return JobState(True)
        _kill_group(pid, signal.SIGKILL)
        return JobState(False)

    def cancel(self, handle: str, grace: float) -> None:
        pid = int(handle)
        _kill_group(pid, signal.SIGTERM)
        timer = threading.Timer(grace, _kill_group, (pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    def owns(self, handle: str, job_dir: Path) -> bool:
        """Whether the live process ``handle`` is this job's (its working folder is the job's), not
        another process that took the id after the job's ended."""
        try:
            return os.path.realpath(f"/proc/{int(handle)}/cwd") == os.path.realpath(job_dir)
        except (OSError, ValueError):
            return False


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def last_status_message(job_dir: Path, action: str, specs: dict) -> str:
    """The message of the last line of the job's status.json, else its last log line."""
    try:
        lines = read_status(task_dir(job_dir, action, specs))
    except (OSError, ValueError):
        lines = []
    if lines and lines[-1].get("message"):
        return str(lines[-1]["message"])
    return tail(job_dir / LOG_FILE, 1).strip()


def paused_message(job_dir: Path, action: str, specs: dict) -> str:
    """What a paused job will resume from: its results folder's latest checkpoint, if any."""
    latest = latest_checkpoint(task_dir(job_dir, action, specs))
    if latest is None:
        return "paused before its first checkpoint; resume starts it again"
    return f"paused; resume goes on from {latest.name}"


def finished_ok(job_dir: Path, action: str, specs: dict) -> bool:
    """Whether the job's status.json ends with SUCCESS."""
    try:
        lines = read_status(task_dir(job_dir, action, specs))
    except (OSError, ValueError):
        return False
    return bool(lines) and lines[-1].get("status") == "SUCCESS"


class Scheduler:
    """Claims Pending jobs and follows running ones, every ``settings.poll_interval`` seconds, in a
    thread of its own (``start``/``stop``); ``tick`` runs one round."""

    def __init__(self, settings: Settings, sessions: Callable, executor: Executor):
        self.settings = settings
        self.sessions = sessions
        self.executor = executor
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.reconcile()
        self._thread = threading.Thread(target=self._run, name="rtdetr-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """Run the next round now (a job was submitted or canceled)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a database hiccup must not end the scheduler
                log.exception("scheduler round failed")
            self._wake.wait(self.settings.poll_interval)
            self._wake.clear()

    def reconcile(self) -> None:
        """Rows that a previous server left active: live processes are followed again (as jobs of
        this server), ended ones get Done or Error from their status.json."""
        with self.sessions() as session:
            jobs = session.scalars(select(db.Job).where(db.Job.status.in_(db.ACTIVE))).all()
        for job in jobs:
            owner = getattr(self.executor, "owns", None)
            alive = job.handle is not None and self.executor.status(job.handle).running
            if alive and (owner is None or owner(job.handle, Path(job.job_dir))):
                continue
            self._finish(job, None)

    def tick(self) -> None:
        with self.sessions() as session:
            active = session.scalars(select(db.Job).where(db.Job.status.in_(db.ACTIVE))).all()
        running = 0
        busy = set()  # GPUs of the jobs that still run
        for job in active:
            state = self.executor.status(job.handle) if job.handle else JobState(False)
            if state.running:
                running += 1
                if job.gpu is not None:
                    busy.add(job.gpu)
            else:
                self._finish(job, state.exit_code)
        while running < self.settings.max_jobs and not self._stop.is_set():
            with self.sessions() as session:
                job = session.scalars(
                    select(db.Job).where(db.Job.status.in_(db.QUEUED)).order_by(db.Job.created_at).limit(1)
                ).first()
            if job is None:
                return
            free = [g for g in self.settings.gpus if g not in busy]
            gpu = free[0] if free else None
            if self.settings.gpus and gpu is None:
                return
            if self._launch(job, gpu):
                running += 1
                if gpu is not None:
                    busy.add(gpu)

    def _launch(self, job: db.Job, gpu: str | None) -> bool:
        with self.sessions() as session:
            if not db.claim(session, job.id, gpu=gpu):
                return False
        job_dir = Path(job.job_dir)
        env = {"CUDA_VISIBLE_DEVICES": gpu if gpu is not None else ""}
        if gpu is None and self.settings.max_jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            # jobs on the CPU side by side: each its share of the cores (oversubscribed threads crawl)
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.settings.max_jobs))
        try:
            handle = self.executor.submit(
                job.id, self.settings.command(job.action, job_dir / SPEC_FILE), job_dir, env
            )
        except OSError as exc:
            with self.sessions() as session:
                db.set_status(
                    session, job.id, db.ERROR, (db.RUNNING,), message=f"cannot start the job: {exc}"
                )
            return False
        with self.sessions() as session:
            session.execute(update(db.Job).where(db.Job.id == job.id).values(handle=handle))
            session.commit()
            stopping = session.get(db.Job, job.id).status
        if stopping == db.CANCELING:  # canceled between the claim and the start
            self.executor.cancel(handle, self.settings.cancel_grace)
        elif stopping == db.PAUSING:
            self.executor.cancel(handle, self.settings.pause_grace)
        log.info(
            "job %s (%s) started: process %s, %s", job.id, job.action, handle, f"GPU {gpu}" if gpu else "CPU"
        )
        return True

    def _finish(self, job: db.Job, exit_code: int | None) -> None:
        """Record how a job whose process ended ends: Canceled when a cancel was asked for (read
        afresh: it may have come after this round read the job), Paused when a pause was (unless it
        finished first), else Done or Error."""
        job_dir = Path(job.job_dir)
        for _ in range(2):  # a second time when a cancel came between the read and the write
            with self.sessions() as session:
                current = session.get(db.Job, job.id)
                if current is None or current.status not in db.ACTIVE:
                    return
                ok = exit_code == 0 or (exit_code is None and finished_ok(job_dir, job.action, job.specs))
                if current.status == db.CANCELING:
                    status, message, expected = db.CANCELED, "canceled by the user", (db.CANCELING,)
                elif current.status == db.PAUSING and not ok:
                    status, expected = db.PAUSED, (db.PAUSING,)
                    message = paused_message(job_dir, job.action, job.specs)
                elif ok:
                    status, expected = db.DONE, (current.status,)
                    message = last_status_message(job_dir, job.action, job.specs)
                else:
                    status, expected = db.ERROR, (current.status,)
                    message = last_status_message(job_dir, job.action, job.specs) or "the job's process ended"
                    if exit_code is None:
                        message = f"the job ended out of the server's sight (it was down, or a cluster stopped the job); last status: {message}"
                if db.set_status(session, job.id, status, expected, exit_code=exit_code, message=message):
                    log.info("job %s (%s): %s", job.id, job.action, status)
                    return
