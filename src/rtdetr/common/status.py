"""TAO's status.json: JSON Lines appended by rank 0, one per event of a task."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from rtdetr.log import is_rank_zero

STATUSES = ("STARTED", "RUNNING", "SUCCESS", "FAILURE", "SKIPPED")


class StatusLogger:
    """Appends TAO status lines to ``<results_dir>/status.json``."""

    def __init__(self, results_dir: str | os.PathLike, enabled: bool | None = None):
        self.path = Path(results_dir) / "status.json"
        self.enabled = is_rank_zero() if enabled is None else enabled

    def write(self, status: str, message: str = "", kpi: dict[str, Any] | None = None, **extra: Any) -> None:
        """Append one line; ``extra`` adds keys such as epoch, max_epoch, time_per_epoch, eta."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if not self.enabled:
            return
        now = datetime.now()
        line = {
            "date": f"{now.month}/{now.day}/{now.year}",
            "time": f"{now.hour}:{now.minute}:{now.second}",
            "status": status,
            "verbosity": "INFO",
            "message": message,
            **extra,
        }
        if kpi:
            line["kpi"] = kpi
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(_finite(line), default=str, allow_nan=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)  # one append: a reader never sees half a line
        finally:
            os.close(fd)


def _finite(value: Any) -> Any:
    """``value`` for strict JSON: tensors and numpy scalars as numbers, NaN and infinities as null
    (e.g. a val_loss with no readable validation image)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_status(results_dir: str | os.PathLike) -> list[dict]:
    """The status lines of a results directory, oldest first."""
    path = Path(results_dir) / "status.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
