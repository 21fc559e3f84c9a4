"""The distill task: `rtdetr distill -e spec.yaml`, train with a frozen teacher's features as extra targets."""

from __future__ import annotations

from pathlib import Path

from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig
from rtdetr.engine.trainer import fit
from rtdetr.tasks import train
from rtdetr.tasks.files import TaskFiles


def files(cfg: ExperimentConfig) -> TaskFiles:
    """Train's files, and the teacher's weights."""
    found = train.files(cfg)
    found.inputs["distill.pretrained_teacher_model_path"] = cfg.distill.pretrained_teacher_model_path
    return found


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger) -> None:
    fit(cfg, results_dir, status, task="distill")
