"""Running a task the TAO way: results directory, experiment.yaml, status.json."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from rtdetr.config import ExperimentConfig, dump_yaml, spec_to_dict
from rtdetr.errors import UserError
from rtdetr.fileio import atomic_write_text
from rtdetr.log import is_rank_zero
from rtdetr.status import StatusLogger
from rtdetr.tasks import get_runner

log = logging.getLogger(__name__)


class Terminated(UserError):
    """SIGTERM (e.g. `kill`, a scheduler's pre-emption) stopped a task other than train (which stops
    at a step boundary through Lightning)."""

    kind = "Interrupted"
    exit_code = 143  # 128 + SIGTERM, as a process killed by it


@contextlib.contextmanager
def sigterm_raises(task: str) -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated, so that files being written are cleaned up and
    status.json gets its FAILURE line (the default action kills the process on the spot)."""
    if task == "train" or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise Terminated(f"SIGTERM received: {task} stopped; files written so far are intact")

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def task_results_dir(cfg: ExperimentConfig, task: str) -> Path:
    """TAO's rule: ``<task>.results_dir`` if set, else ``<results_dir>/<task>``."""
    own = getattr(getattr(cfg, task, None), "results_dir", None)
    return Path(own) if own else Path(cfg.results_dir) / task


def prepare_results_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create results directory {path}: {exc.strerror}; set results_dir to a writable folder"
        ) from exc
    if not os.access(path, os.W_OK):
        raise UserError(f"results directory {path} is not writable; set results_dir to a writable folder")
    return path


def run_task(task: str, cfg: ExperimentConfig) -> Path:
    """Prepare the results directory, save the resolved spec, run the task with status lines."""
    results_dir = prepare_results_dir(task_results_dir(cfg, task))
    spec_file = results_dir / "experiment.yaml"
    previous = None  # the spec of an earlier run in this folder, put back if this one is refused
    if is_rank_zero():
        previous = spec_file.read_text(encoding="utf-8") if spec_file.is_file() else None
        atomic_write_text(spec_file, dump_yaml(spec_to_dict(cfg)))
    status = StatusLogger(results_dir)
    status.write("STARTED", f"Starting {task}.")
    try:
        runner = get_runner(task)
        with sigterm_raises(task):
            runner(cfg, results_dir, status)
    except UserError as exc:
        status.write("FAILURE", f"{exc.kind}: {exc}")
        if previous is not None and exc.exit_code == 2:  # refused input: the earlier spec stays
            atomic_write_text(spec_file, previous)
        raise
    except KeyboardInterrupt:
        status.write(
            "FAILURE", f"Interrupted: {task} stopped by the user (Ctrl+C); files written so far are intact"
        )
        raise
    except Exception as exc:
        status.write("FAILURE", f"{type(exc).__name__}: {exc}")
        raise
    status.write("SUCCESS", f"{task.capitalize()} finished successfully.")
    log.info("%s finished; results in %s", task, results_dir)
    return results_dir
