"""The server's settings and the layout of its data folder.

::

    DATA/.service/token        the bearer token (created on first start, mode 0600)
    DATA/.service/service.db   the SQLite database (unless --db names another)
    DATA/.service/tmp/         uploads and download archives being written
    DATA/datasets/<id>/        datasets uploaded as archives
    DATA/jobs/<id>/            one folder per job: spec.yaml, job.log, <action>/ (the task's results)

A spec may name any path under DATA except DATA/.service; what a job writes goes to its own folder.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rtdetr.errors import UserError

SERVICE_DIR = ".service"
TOKEN_FILE = "token"
DB_FILE = "service.db"
TOKEN_ENV = "RTDETR_SERVICE_TOKEN"
EXECUTORS = ("local", "slurm", "submitit-local")


def default_command(action: str, spec: Path) -> list[str]:
    """The command line of a job: the toolkit's own CLI in a fresh interpreter."""
    return [sys.executable, "-m", "rtdetr.cli", action, "-e", str(spec)]


def visible_gpus() -> list[str]:
    """GPU ids to hand out one per job: CUDA_VISIBLE_DEVICES when set, else those `nvidia-smi -L`
    lists (none without a driver). Torch is not imported: the server stays light."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


@dataclass
class Settings:
    """What `rtdetr serve` is started with.

    data_dir: the data folder (layout in the module docstring).
    db_url: a SQLAlchemy URL; None: SQLite at DATA/.service/service.db.
    gpus: GPU ids, one job per GPU at a time (CUDA_VISIBLE_DEVICES); empty: jobs run on the CPU.
    max_jobs: jobs running at once; None: one per GPU, or 1 on the CPU.
    poll_interval: seconds between two rounds of the scheduler.
    cancel_grace: seconds between SIGTERM and SIGKILL of a canceled job's process group.
    pause_grace: seconds a paused job has to stop at a step boundary (SIGTERM) before SIGKILL.
    max_upload_bytes: largest dataset archive accepted, compressed and extracted alike.
    command: (action, spec file) -> the command line of a job.
    executor: where jobs run: "local" (processes of this machine), "slurm" (a Slurm cluster through
        submitit; the server runs where sbatch does) or "submitit-local" (the Slurm executor's path
        on this machine, with submitit's local executor: a way to try it without a cluster).
    slurm_partition: the partition jobs are submitted to; None: the cluster's default.
    slurm_nodes: nodes per job; a train spec's train.num_nodes must be the same.
    slurm_gpus_per_node: GPUs per node, one task (one DDP rank) each; 0: one task on the CPU.
    slurm_time_min: a job's time limit in minutes.
    slurm_extra: more sbatch parameters, {name: value} (e.g. {"account": "vision", "cpus-per-task": 8}).
    """

    data_dir: Path
    db_url: str | None = None
    gpus: Sequence[str] | None = None
    max_jobs: int | None = None
    poll_interval: float = 1.0
    cancel_grace: float = 2.0
    pause_grace: float = 60.0
    max_upload_bytes: int = 20 * 1024**3
    command: Callable[[str, Path], list[str]] = default_command
    executor: str = "local"
    slurm_partition: str | None = None
    slurm_nodes: int = 1
    slurm_gpus_per_node: int = 0
    slurm_time_min: int = 60 * 24
    slurm_extra: dict = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if self.executor not in EXECUTORS:
            raise UserError(f"executor: '{self.executor}' is not one of {', '.join(EXECUTORS)}")
        for name, value, least in (
            ("slurm_nodes", self.slurm_nodes, 1),
            ("slurm_gpus_per_node", self.slurm_gpus_per_node, 0),
            ("slurm_time_min", self.slurm_time_min, 1),
        ):
            if value < least:
                raise UserError(f"{name} must be at least {least}, got {value}")
        self.slurm_extra = dict(self.slurm_extra)
        if self.gpus is None:  # a Slurm job's GPUs are Slurm's to give, not this machine's
            self.gpus = [] if self.executor == "slurm" else visible_gpus()
        self.gpus = list(self.gpus)
        if self.max_jobs is None:
            self.max_jobs = max(1, len(self.gpus))
        if self.max_jobs < 1:
            raise UserError(f"max_jobs must be at least 1, got {self.max_jobs}")

    @property
    def service_dir(self) -> Path:
        return self.data_dir / SERVICE_DIR

    @property
    def tmp_dir(self) -> Path:
        return self.service_dir / "tmp"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def token_file(self) -> Path:
        return self.service_dir / TOKEN_FILE

    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.service_dir / DB_FILE}"

    def prepare(self) -> None:
        """Create the data folder layout and the token (first start); read the token."""
        try:
            for folder in (self.data_dir, self.service_dir, self.tmp_dir, self.datasets_dir, self.jobs_dir):
                folder.mkdir(parents=True, exist_ok=True)
            os.chmod(self.service_dir, 0o700)
            self.token = self.token or read_or_create_token(self.token_file)
        except OSError as exc:
            raise UserError(f"data folder {self.data_dir}: cannot prepare it: {exc.strerror or exc}") from exc


def read_or_create_token(path: Path) -> str:
    """The token in ``path``; a new random one written there (mode 0600) when the file is absent."""
    if not path.exists():
        token = "rtd_" + secrets.token_urlsafe(32)  # never starts with "-", which reads as a flag
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another server created it first
            return read_or_create_token(path)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return token
    token = path.read_text().strip()
    if not token:
        raise UserError(f"{path}: the token file is empty; remove it to have a new token created")
    return token
