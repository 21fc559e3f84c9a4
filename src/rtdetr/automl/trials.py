"""One AutoML trial: a `rtdetr train` process of its own, watched through its status.json.

The trial's command runs in a new process group (in the search's working folder: a spec's relative
paths mean what they mean to the search), its output in the trial folder's ``trial.log``.
Each epoch line that status.json gains is handed to ``report(epoch, value)``; when that answers True
(the pruner's verdict) the process group gets SIGTERM (the trainer stops at the next step), then
SIGKILL after a grace time, and the folder gets a ``PRUNED`` file saying at which epoch and value.
Whatever ends the watch (an exception, Ctrl+C), the trial's processes do not outlive it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rtdetr.common.files import atomic_write_text
from rtdetr.common.status import read_status

LOG_FILE = "trial.log"
PRUNED_FILE = "PRUNED"


def train_command(spec_file: Path) -> list[str]:
    """The command of a trial: the toolkit's own train task in a fresh interpreter."""
    return [sys.executable, "-m", "rtdetr.cli", "train", "-e", str(Path(spec_file).resolve())]


@dataclass
class TrialOutcome:
    """How a trial's process ended: its exit code, the metric of each epoch it finished (in order),
    whether it was pruned, and the last status message."""

    exit_code: int | None
    values: list[float] = field(default_factory=list)
    pruned: bool = False
    message: str = ""


def epoch_values(status_dir: Path, metric: str) -> dict[int, float]:
    """epoch -> the metric's value, from the epoch lines of a status.json (the last line of an epoch
    counts)."""
    try:
        lines = read_status(status_dir)
    except (OSError, ValueError):
        return {}
    out: dict[int, float] = {}
    for line in lines:
        kpi = line.get("kpi") if isinstance(line, dict) else None
        if isinstance(kpi, dict) and isinstance(line.get("epoch"), int):
            value = kpi.get(metric)
            if isinstance(value, (int, float)):
                out[line["epoch"]] = float(value)
    return out


def last_message(status_dir: Path, log_file: Path) -> str:
    try:
        lines = read_status(status_dir)
    except (OSError, ValueError):
        lines = []
    if lines and isinstance(lines[-1], dict) and lines[-1].get("message"):
        return str(lines[-1]["message"])
    with contextlib.suppress(OSError):
        text = log_file.read_text(errors="replace").strip().splitlines()
        return text[-1] if text else ""
    return ""


def thread_share(concurrent: int) -> dict[str, str]:
    """The environment of a trial that runs beside ``concurrent - 1`` others: its share of the CPU's
    cores for its operator threads (oversubscribed threads make every trial many times slower),
    unless OMP_NUM_THREADS is set already."""
    if concurrent <= 1 or "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // concurrent))}


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_trial(
    command: Sequence[str],
    trial_dir: Path,
    metric: str,
    report: Callable[[int, float], bool],
    poll: float = 0.5,
    grace: float = 30.0,
    env: dict[str, str] | None = None,
) -> TrialOutcome:
    """Run ``command`` for the trial in ``trial_dir`` (rules in the module docstring), with ``env``
    added to this process's environment."""
    status_dir = trial_dir / "train"
    seen: set[int] = set()
    pruned_at: tuple[int, float] | None = None
    with open(trial_dir / LOG_FILE, "ab") as out:
        process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
    try:
        while True:
            ended = process.poll() is not None
            values = epoch_values(status_dir, metric)
            for epoch in sorted(e for e in values if e not in seen):
                seen.add(epoch)
                if pruned_at is None and report(epoch, values[epoch]):
                    pruned_at = (epoch, values[epoch])
                    _stop(process, grace)
                    break
            if ended or pruned_at is not None:
                break
            time.sleep(poll)
        process.wait()
    finally:
        if process.poll() is None:  # an exception or Ctrl+C in the watch: the trial goes with it
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        _signal_group(process.pid, signal.SIGKILL)  # workers left behind by the trial's process
    values = epoch_values(status_dir, metric)
    last = pruned_at[0] if pruned_at is not None else max(values, default=-1)
    ordered = [values[e] for e in sorted(values) if e <= last]  # a pruned trial: up to its verdict
    if pruned_at is not None:
        epoch, value = pruned_at
        note = {
            "epoch": epoch,
            "value": value,
            "message": f"pruned after epoch {epoch} ({metric} {value:.4f})",
        }
        atomic_write_text(trial_dir / PRUNED_FILE, json.dumps(note) + "\n")
        return TrialOutcome(process.returncode, ordered, True, note["message"])
    return TrialOutcome(process.returncode, ordered, False, last_message(status_dir, trial_dir / LOG_FILE))


def _stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the trial's group, SIGKILL once ``grace`` seconds have passed."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
