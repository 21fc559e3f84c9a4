"""The Slurm executor: a job is the local executor's command line, submitted through submitit.

On the cluster, each task of the job runs ``JobCommand`` (pickled by submitit): it starts the command
in the job's folder, its output appended to job.log, and ends as the command does. A train or
distill job asks for ``slurm_nodes`` nodes and ``slurm_gpus_per_node`` tasks on each (one on the CPU)
under srun: every task is one DDP rank, and Lightning's SLURMEnvironment takes ranks and addresses from
srun's variables (the spec's ``train.num_nodes`` and ``train.num_gpus`` must match); the other actions
run one task on one node with one GPU (none on the CPU). With ``executor: submitit-local`` the
same path runs on this machine through submitit's local executor: one task, on the GPU the scheduler
gives (as the local executor), a way to try it without a cluster.

::

    JOB/submitit/<id>_submission.sh      the sbatch script (Slurm)
    JOB/submitit/<id>_submitted.pkl      the pickled JobCommand
    JOB/submitit/<id>_<task>_log.out     submitit's own log of the task
    JOB/submitit/<id>_<task>_result.pkl  how the task ended: ("success", 0) or ("error", traceback)
    JOB/submitit/<id>_<task>.pid         the process id of the task's command (its process group)
    JOB/submitit/<id>.cancel             written by a cancel: a task that has not started its command yet won't

A handle is ``<cluster>|<submitit folder>|<job id>|<tasks>`` (cluster "slurm" or "local"; for "local"
the job id is the process id of submitit's controller), everything a restarted server needs to follow
the job again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.core import utils as submitit_utils

from rtdetr.errors import UserError
from rtdetr.service.executor import LOG_FILE, Executor, JobState, LocalExecutor, process_alive
from rtdetr.service.settings import Settings

SUBMITIT_DIR = "submitit"
CLUSTERS = {"slurm": "slurm", "submitit-local": "local"}
# sbatch --signal: SIGTERM to every process of the job two minutes before its time limit, so that
# training stops at a step boundary and says so in its status (submitit's default, USR2, would end it)
TIME_LIMIT_SIGNAL = "TERM@120"
DDP_ACTIONS = ("train", "distill")  # the actions that run one rank per task; the others run one task
SACCT_INTERVAL = 15.0  # seconds between two sacct calls for jobs that ended without a result file
EXIT_STATUS = re.compile(r"the job's command ended with exit status (-?\d+)")


def make_executor(settings: Settings) -> Executor:
    """The executor that ``settings.executor`` names."""
    if settings.executor == "local":
        return LocalExecutor()
    return SlurmExecutor(settings)


def slurm_parameters(settings: Settings, name: str, ranks: bool = True) -> dict:
    """What ``submitit.AutoExecutor(cluster="slurm").update_parameters`` is given for a job: with
    ``ranks`` (train, distill), one task per GPU on each node (one on the CPU), else one task on one
    node with one GPU (if GPUs are asked for); the time limit, the partition and the extra sbatch
    parameters. srun ends every task when one fails (a DDP rank alone would wait forever)."""
    gpus = settings.slurm_gpus_per_node if ranks else min(1, settings.slurm_gpus_per_node)
    params = {
        "name": name,
        "nodes": settings.slurm_nodes if ranks else 1,
        "tasks_per_node": max(1, gpus),
        "gpus_per_node": gpus or None,  # None: no GPU asked for
        "timeout_min": settings.slurm_time_min,
        "stderr_to_stdout": True,
        "slurm_partition": settings.slurm_partition,
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
        "slurm_additional_parameters": {"signal": TIME_LIMIT_SIGNAL, **settings.slurm_extra},
    }
    return {k: v for k, v in params.items() if v is not None}


def local_parameters(settings: Settings, name: str) -> dict:
    """What ``submitit.AutoExecutor(cluster="local")`` is given: one task on this machine, with the
    time limit; its GPU is the scheduler's (CUDA_VISIBLE_DEVICES in the job's environment)."""
    return {"name": name, "nodes": 1, "tasks_per_node": 1, "timeout_min": settings.slurm_time_min,
            "stderr_to_stdout": True}  # fmt: skip


class CommandFailed(RuntimeError):
    """The job's command ended with a non-zero exit status (negative: killed by that signal)."""

    def __init__(self, code: int):
        super().__init__(f"the job's command ended with exit status {code}")
        self.code = code


@dataclass
class JobCommand:
    """One task of a submitit job: runs ``command`` in ``job_dir`` in a session of its own, its output
    appended to job.log, with ``env`` over the task's environment (srun's SLURM_* variables pass on).
    SIGTERM, and the local executor's time-limit signal USR2, are passed to the command's process
    group: the toolkit stops at its next step boundary and writes its status. SIGINT is ignored
    (submitit's local tasks are in the server's process group: a Ctrl+C of the server leaves its jobs
    running, as the local executor's). Returns 0, or raises CommandFailed."""

    command: list[str]
    job_dir: str
    env: dict[str, str]

    def __call__(self) -> int:
        job = submitit.JobEnvironment()
        folder = Path(self.job_dir) / SUBMITIT_DIR
        cancel_file = folder / f"{job.job_id}.cancel"
        stop: list[bool] = []
        child: subprocess.Popen | None = None

        def forward(signum, frame) -> None:
            stop.append(True)
            if child is not None:
                _signal_group(child.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGUSR2, forward)
        signal.signal(signal.SIGINT, lambda signum, frame: None)  # a handler, not SIG_IGN: not inherited
        if cancel_file.exists():
            raise CommandFailed(128 + signal.SIGTERM)
        with open(Path(self.job_dir) / LOG_FILE, "ab") as out:
            child = subprocess.Popen(
                self.command,
                cwd=self.job_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        (folder / f"{job.job_id}_{job.global_rank}.pid").write_text(str(child.pid))
        if stop or cancel_file.exists():  # a signal or a cancel came while the command was starting
            _signal_group(child.pid, signal.SIGTERM)
        code = child.wait()
        _signal_group(child.pid, signal.SIGKILL)  # what the command left of its process group
        if code != 0:
            raise CommandFailed(code)
        return 0


@dataclass(frozen=True)
class Handle:
    """A job's handle, ``<cluster>|<submitit folder>|<job id>|<tasks>``, and the files it names."""

    cluster: str  # "slurm" or "local"
    folder: Path  # the job's submitit folder
    job_id: str
    tasks: int

    @classmethod
    def parse(cls, handle: str) -> Handle:
        cluster, rest = handle.split("|", 1)
        folder, job_id, tasks = rest.rsplit("|", 2)
        return cls(cluster, Path(folder), job_id, int(tasks))

    def __str__(self) -> str:
        return f"{self.cluster}|{self.folder}|{self.job_id}|{self.tasks}"

    @property
    def job_dir(self) -> Path:
        return self.folder.parent

    def result_file(self, task: int) -> Path:
        return submitit_utils.JobPaths(self.folder, self.job_id, task).result_pickle

    def pid_files(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.job_id}_*.pid"))


class SlurmExecutor(Executor):
    """Jobs through submitit: on a Slurm cluster (``settings.executor`` "slurm") or in processes of
    this machine ("submitit-local").

    - status: a job has ended once every task left its result file (a job of an earlier server too),
      or once sacct says so (Slurm; a job killed from outside leaves no result), or once submitit's
      controller and the command it started have gone (local). The exit status is the first non-zero
      one of the tasks, else 0; None when a task ended without a result file.
    - cancel: a polite SIGTERM to every task's command (``scancel --signal=TERM`` on Slurm) and a mark
      that stops a task which has not started yet; after ``grace`` seconds, SIGKILL (``scancel
      --signal=KILL`` and ``scancel``, which also takes a job still pending off the queue).
    A handle without "|" is the local executor's (a server that ran one before): it is followed so.
    """

    def __init__(self, settings: Settings):
        if settings.executor not in CLUSTERS:
            raise UserError(f"executor: '{settings.executor}' is not one of {', '.join(CLUSTERS)}")
        if settings.executor == "slurm" and shutil.which("sbatch") is None:
            raise UserError("executor slurm: sbatch not found; start the server where Slurm's commands run")
        self.settings = settings
        self.cluster = CLUSTERS[settings.executor]
        self.sacct_interval = SACCT_INTERVAL
        self._jobs: dict[str, submitit.Job] = {}
        self._lock = threading.Lock()
        self._last_sacct = float("-inf")
        self._local = LocalExecutor()

    def submit(self, job_id: str, command: list[str], job_dir: Path, env: dict[str, str]) -> str:
        folder = Path(job_dir) / SUBMITIT_DIR
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        if self.cluster == "slurm":
            ranks = any(word in DDP_ACTIONS for word in command)  # `rtdetr <action> -e spec.yaml`
            executor.update_parameters(**slurm_parameters(self.settings, f"rtdetr-{job_id}", ranks))
            env = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}  # Slurm sets it
        else:
            executor.update_parameters(**local_parameters(self.settings, f"rtdetr-{job_id}"))
        try:
            job = executor.submit(JobCommand(list(command), str(job_dir), dict(env)))
        except (submitit_utils.FailedJobError, submitit_utils.FailedSubmissionError) as exc:
            raise OSError(f"submitit: {str(exc).strip() or type(exc).__name__}") from exc
        handle = str(Handle(self.cluster, folder, job.job_id, job.num_tasks))
        with self._lock:
            self._jobs[handle] = job
        return handle

    def status(self, handle: str) -> JobState:
        if "|" not in handle:
            return self._local.status(handle)
        h = Handle.parse(handle)
        with self._lock:
            job = self._jobs.get(handle)
        if h.cluster == "local":
            running = self._local_running(h, job)
        else:
            running = not self._slurm_done(h)
        if running:
            return JobState(True)
        with self._lock:
            self._jobs.pop(handle, None)
        return JobState(False, exit_code(h))

    def cancel(self, handle: str, grace: float) -> None:
        if "|" not in handle:
            self._local.cancel(handle, grace)
            return
        h = Handle.parse(handle)
        with contextlib.suppress(OSError):
            (h.folder / f"{h.job_id}.cancel").touch()
        if h.cluster == "slurm":
            _scancel("--signal=TERM", h.job_id)
            timer = threading.Timer(grace, _scancel_hard, (h.job_id,))
        else:
            _signal_commands(h, signal.SIGTERM)
            timer = threading.Timer(grace, _signal_commands, (h, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    def _local_running(self, h: Handle, job: submitit.Job | None) -> bool:
        """Whether submitit's controller (a process of this server, or of an earlier one) or any
        task's command still runs."""
        if job is not None:
            controller = not job.done()
        else:
            pid = int(h.job_id)
            controller = process_alive(pid) and _cmdline_mentions(pid, h.folder)
        return controller or any(pid is not None for pid in _live_commands(h))

    def _slurm_done(self, h: Handle) -> bool:
        """Whether every task left its result file, else whether sacct says that the job ended
        (asked every ``sacct_interval`` seconds at most, for all the jobs it follows at once)."""
        _refresh(h.folder)
        if all(h.result_file(task).exists() for task in range(h.tasks)):
            return True
        now = time.monotonic()
        with self._lock:
            due = now - self._last_sacct >= self.sacct_interval
            if due:
                self._last_sacct = now
        return submitit.SlurmJob.watcher.is_done(h.job_id, mode="force" if due else "cache")


def exit_code(h: Handle) -> int | None:
    """The first non-zero exit status of the job's tasks, else 0; None when a task left no result."""
    codes: list[int | None] = []
    for task in range(h.tasks):
        try:
            outcome, value = submitit_utils.pickle_load(h.result_file(task))
        except (OSError, EOFError, ValueError):
            codes.append(None)
            continue
        if outcome == "success":
            codes.append(0)
        else:  # the traceback of CommandFailed, or of an error before the command ran
            found = EXIT_STATUS.search(str(value))
            codes.append(int(found.group(1)) if found else 1)
    failed = [c for c in codes if c]
    if failed:
        return failed[0]
    return None if None in codes else 0


def _live_commands(h: Handle) -> list[int | None]:
    """For each task's command started on this machine: its process id while it runs (in the job's
    folder, not another process that took the id since), else None."""
    out: list[int | None] = []
    for path in h.pid_files():
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            continue
        alive = process_alive(pid) and _cwd_is(pid, h.job_dir)
        out.append(pid if alive else None)
    return out


def _signal_commands(h: Handle, sig: int) -> None:
    for pid in _live_commands(h):
        if pid is not None:
            _signal_group(pid, sig)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _cwd_is(pid: int, folder: Path) -> bool:
    try:
        return os.path.realpath(f"/proc/{pid}/cwd") == os.path.realpath(folder)
    except OSError:
        return False


def _cmdline_mentions(pid: int, folder: Path) -> bool:
    """Whether the process's command line names ``folder`` (submitit's controller is
    ``python -m submitit.local._local FOLDER``), not another process that took the id since."""
    try:
        return str(folder) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return True  # no /proc: the process id is all there is


def _refresh(folder: Path) -> None:
    """Have a network file system look at the folder afresh (result files written on other nodes)."""
    with contextlib.suppress(OSError):
        folder.chmod(folder.stat().st_mode)


def _scancel_hard(job_id: str) -> None:
    """SIGKILL to every process of the job, then the job's end (or its removal from the queue)."""
    _scancel("--signal=KILL", job_id)
    _scancel(job_id)


def _scancel(*args: str) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["scancel", *args], capture_output=True, timeout=60, check=False)
