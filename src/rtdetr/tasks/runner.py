"""Running a task the TAO way: results directory, experiment.yaml, status.json."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rtdetr.config import ExperimentConfig, dump_yaml, spec_to_dict
from rtdetr.errors import UserError
from rtdetr.fileio import atomic_write_text
from rtdetr.log import is_rank_zero
from rtdetr.status import StatusLogger
from rtdetr.tasks import get_runner

log = logging.getLogger(__name__)


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
