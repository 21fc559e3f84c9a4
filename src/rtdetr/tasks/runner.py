"""Running a task the TAO way: results directory, experiment.yaml, status.json."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from rtdetr.common.files import atomic_write, atomic_write_text
from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig, dump_yaml, spec_to_dict
from rtdetr.data.coco import ISSUES_LOG
from rtdetr.errors import NotImplementedTask, UserError
from rtdetr.log import is_rank_zero
from rtdetr.tasks import get_runner, task_module
from rtdetr.tasks.files import (
    SPEC_FILE,
    STATUS_FILE,
    TaskFiles,
    check_outputs_not_inputs,
    claim_results_dir,
    remove_partial_files,
)

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM (e.g. `kill`, a scheduler's pre-emption) stopped a task: a BaseException like
    KeyboardInterrupt, so that no ``except Exception`` takes it for an error of its own."""

    exit_code = 143  # 128 + SIGTERM, as a process killed by it


@contextlib.contextmanager
def sigterm_raises(task: str) -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated, so that files being written are cleaned up and
    status.json gets its FAILURE line (the default action kills the process on the spot). Not for
    train (Lightning stops it at a step boundary) nor gen_trt_engine (a Python handler would wait
    for TensorRT's build, minutes long, to return)."""
    if task in ("train", "gen_trt_engine") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise Terminated(f"SIGTERM received: {task} stopped")

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if is_rank_zero() and path.is_file() else None
    except OSError:
        return None


def task_results_dir(cfg: ExperimentConfig, task: str) -> Path:
    """TAO's rule: ``<task>.results_dir`` if set, else ``<results_dir>/<task>``; a training dry run
    (train.is_dry_run) writes into its ``dry_run`` folder, so that it leaves a real run's logs,
    status and spec there as they are."""
    section = getattr(cfg, task, None)
    dry_run = task == "train" and bool(cfg.train.is_dry_run)
    return results_dir_of(task, getattr(section, "results_dir", None), cfg.results_dir, dry_run)


def results_dir_of(task: str, own: str | None, top: str | None, dry_run: bool) -> Path | None:
    """The rule of :func:`task_results_dir` on raw values (also for a spec that failed to load);
    None when neither results_dir is set (an empty top-level one is refused by the spec's rules)."""
    if own:
        path = Path(own)
    elif top is not None and top.strip():
        path = Path(top) / task
    else:
        return None
    return path / "dry_run" if dry_run else path


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


def check_task_files(task: str, cfg: ExperimentConfig, results_dir: Path) -> TaskFiles:
    """Before anything is written: no output of the task is one of its inputs, and the results folder
    may take its files (rtdetr.tasks.files); partial files of a killed run there are removed."""
    try:
        files = task_module(task).files(cfg)
    except NotImplementedTask:
        files = TaskFiles()
    owned = files.all_owned()
    in_folder = {
        f"{task}'s {name}": results_dir / name for name in owned if not any(c in name for c in "*?[")
    }
    check_outputs_not_inputs(files.inputs, {**files.outputs, **in_folder})
    if results_dir.is_dir():
        claim_results_dir(results_dir, task, owned)
        if is_rank_zero():
            remove_partial_files(results_dir, owned)
    return files


def record_refusal(results_dir: Path | None, task: str, exc: UserError) -> None:
    """A FAILURE line for a run refused before it started (a bad spec, an output that is an input) in
    the task's results folder: a new or empty folder, or one whose status.json is this task's;
    nothing otherwise."""
    if results_dir is None or not is_rank_zero():
        return
    try:
        if results_dir.exists():
            claim_results_dir(results_dir, task, ())
            if not (results_dir / STATUS_FILE).exists() and any(results_dir.iterdir()):
                return
        results_dir.mkdir(parents=True, exist_ok=True)
        lines = exc.lines()
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        StatusLogger(results_dir).write("FAILURE", f"{exc.kind}: {lines[0]}{more}")
    except (UserError, OSError):
        return


# the fields that take a weights file, and so a hub name (rtdetr.model.hub)
WEIGHT_FIELDS = (
    "model.pretrained_backbone_path", "train.pretrained_model_path", "evaluate.checkpoint",
    "inference.checkpoint", "export.checkpoint", "distill.pretrained_teacher_model_path",
    "distill.teacher.pretrained_backbone_path", "model.frozen_fm.checkpoint", "distill.teacher.frozen_fm.checkpoint",
)  # fmt: skip


def resolve_hub_names(cfg: ExperimentConfig) -> None:
    """Replace each hub name (``hf://...``) in the weight fields by its local file, in place:
    downloaded (or taken from the cache) and, for an RT-DETR, converted once."""
    for dotted in WEIGHT_FIELDS:
        *parents, leaf = dotted.split(".")
        node = cfg
        for name in parents:
            node = getattr(node, name)
        value = getattr(node, leaf)
        if isinstance(value, str) and value.startswith("hf://"):
            from rtdetr.model import hub  # torch and huggingface_hub: only when a name is given

            setattr(node, leaf, str(hub.resolve(value, dotted)))


def run_task(task: str, cfg: ExperimentConfig) -> Path:
    """Check the task's files, prepare the results directory, save the resolved spec, run the task
    with status lines."""
    resolve_hub_names(cfg)
    results_dir = task_results_dir(cfg, task)
    try:
        check_task_files(task, cfg, results_dir)
    except UserError as exc:
        record_refusal(results_dir, task, exc)
        raise
    results_dir = prepare_results_dir(results_dir)
    spec_file = results_dir / SPEC_FILE
    # an earlier run's spec and issue log, put back if this run is refused (bad input)
    earlier = {name: _read_bytes(results_dir / name) for name in (spec_file.name, ISSUES_LOG)}
    if is_rank_zero():
        atomic_write_text(spec_file, dump_yaml(spec_to_dict(cfg)))
    status = StatusLogger(results_dir)
    status.write("STARTED", f"Starting {task}.")
    try:
        runner = get_runner(task)
        with sigterm_raises(task):
            runner(cfg, results_dir, status)
    except UserError as exc:
        status.write("FAILURE", f"{exc.kind}: {exc}")
        if exc.exit_code == 2 and is_rank_zero():
            for name, data in earlier.items():
                if data is not None:
                    atomic_write(results_dir / name, lambda fh, data=data: fh.write(data), mode="wb")
        raise
    except KeyboardInterrupt:
        status.write(
            "FAILURE", f"Interrupted: {task} stopped by the user (Ctrl+C); files written so far are intact"
        )
        raise
    except Terminated as exc:
        status.write("FAILURE", f"Interrupted: {exc}; files written so far are intact")
        raise
    except Exception as exc:
        status.write("FAILURE", f"{type(exc).__name__}: {exc}")
        raise
    status.write("SUCCESS", f"{task.capitalize()} finished successfully.")
    log.info("%s finished; results in %s", task, results_dir)
    return results_dir
