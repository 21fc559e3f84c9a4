"""The train task: `rtdetr train -e spec.yaml`."""

from __future__ import annotations

from pathlib import Path

from rtdetr.config import ExperimentConfig
from rtdetr.status import StatusLogger


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger) -> None:
    from rtdetr.engine.trainer import fit

    fit(cfg, results_dir, status)
